"""One ping, forward through named stages, each returning a typed value:

parse and authorise (:mod:`service.locations.router`) → :func:`step_visit` (the device's
state stepped and stored, or the ping's first answer replayed) → :func:`decide` (the offer
decision, only when a campaign passed step 4) → :func:`issue` (its rows committed) →
the answer.

The reason codes of DESIGN §4 steps 1-4 are decided in :func:`step_visit`, without I/O
beyond the one state-store call:

- ``out_of_order``: earlier than the device's last processed ping; nothing changes.
- ``low_accuracy``: ``accuracy_m`` above ``max_accuracy_m``; no events (the ping still
  counts as the device's last processed one).
- events are computed (enter / dwell / exit);
- ``stale_ping``: older than ``offer_max_age_s`` — its events are kept (an offline batch
  still records the visit) but it may never bring an offer;
- ``no_trigger``: no campaign's trigger fires on the device's visits;
- ``no_campaign``: an enter or dwell happened and there are no campaigns at all;
- step 4 (:meth:`service.campaigns.live.CampaignSet.screen`): when no campaign passes it,
  the furthest campaign reason (``campaign_paused``, ``not_targeted``, …) is the answer;
  otherwise the answer is provisional (``in_progress``, stored so that a retry arriving
  meanwhile waits instead of deciding twice) and the offer decision follows.
- trust (DESIGN §11): the ping's fix is judged against the device's last accepted one,
  kept in the state document (:func:`service.trust.judge_fix`); a mocked or impossible ping
  moves the visits all the same, and its failed check goes to the offer decision, which
  answers ``suspected_spoofing`` for the campaigns that check trust.
- ``consent_denied``: the user withdrew location consent; the device's state is dropped.
- ``state_unavailable``: the device-state backend is down; no events, no offer, still 200.

A future ping (more than ``future_tolerance_s`` ahead of the server clock) is a 422.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import orjson

from geofences.visits import DeviceState, VisitEvent, step
from service.campaigns.live import CampaignSet, Screen, VisitTrigger
from service.campaigns.service import CampaignHolder
from service.errors import FuturePing
from service.events.types import Event, visit_event
from service.fences.live import IndexHolder
from service.locations.schemas import PingIn
from service.metrics import observe_ping
from service.offers.service import (
    Decision,
    OfferContext,
    PingRef,
    decide,
    decisions_doc,
    issue,
    screened_reason,
)
from service.reasons import Reason
from service.settings import Settings
from service.state.base import ConsentDenied, Replayed, StateStore, StateUnavailable, Stored
from service.trust.checks import Fix, TrustCheck, judge_fix

log = logging.getLogger("geo_offers.locations")

_PING_NS = uuid.UUID("5b0c8d3e-3f4a-4b8e-9a51-6c1f0f2f6a10")
#: How long a retry waits for the decision of its first attempt, in polls.
_AWAIT_POLLS, _AWAIT_POLL_S = 40, 0.05


@dataclass(frozen=True, slots=True)
class PingContext:
    settings: Settings
    holder: IndexHolder
    store: StateStore
    campaigns: CampaignHolder
    offers: OfferContext


def ping_key(ping: PingIn) -> str:
    """The retry identity: the SDK's ``ping_id``, else device + timestamp (to the µs)."""
    if ping.ping_id is not None:
        return ping.ping_id
    return str(uuid.uuid5(_PING_NS, f"{ping.device_id}|{ping.timestamp.timestamp():.6f}"))


def check_not_future(ping: PingIn, settings: Settings, now: float, where: str = "") -> None:
    ahead = ping.timestamp.timestamp() - now
    if ahead > settings.future_tolerance_s:
        raise FuturePing(
            f"{where}timestamp {ping.timestamp.isoformat()} is {ahead:.0f} s ahead of the server "
            f"clock (tolerance {settings.future_tolerance_s:.0f} s); check the device clock",
            [{"field": f"{where}timestamp", "reason": "future_ping"}],
        )


def answer_bytes(
    ping_id: str,
    events: list[dict[str, Any]],
    reason: Reason,
    offer: dict[str, Any] | None = None,
    decisions: list[dict[str, Any]] | None = None,
) -> bytes:
    """The ping answer (``PingOut``); ``decisions`` only under ``explain``."""
    body: dict[str, Any] = {"ping_id": ping_id, "events": events, "offer": offer, "reason": reason}
    if decisions is not None:
        body["decisions"] = decisions
    return orjson.dumps(body)


@dataclass(frozen=True, slots=True)
class Visit:
    """What stepping the device's state made of a ping (a :class:`StepResult`)."""

    state: dict[str, Any] | None  # the new state document; None keeps the current one
    reason: Reason
    answer: bytes  # remembered for retries
    events: list[dict[str, Any]]
    screen: Screen | None = None  # step 4's verdict, when some campaign's trigger fired
    #: The visit events to record with the step, in the state store's same atomic write.
    records: tuple[Event, ...] = ()
    # The ping's own trust check that failed (DESIGN §11), for the offer decision (pending).
    spoofed: TrustCheck | None = None

    @property
    def pending(self) -> bool:
        """A campaign passed step 4: the offer decision follows."""
        return self.screen is not None and bool(self.screen.candidates)


def _triggers(
    prev: DeviceState | None,
    new: DeviceState,
    events: list[VisitEvent],
    ts: float,
    index: Any,
    lat: float,
    lng: float,
) -> list[VisitTrigger]:
    """Every fence the device is inside after this ping, with its time inside."""
    entered = {e.store_id for e in events if e.type == "enter"}
    out = []
    for store_id, visit in new.inside.items():
        fence = index.get(store_id)
        if fence is None:
            continue
        prev_dwell = None
        if store_id not in entered and prev is not None and prev.last_ts >= visit.entered_at:
            prev_dwell = prev.last_ts - visit.entered_at
        out.append(
            VisitTrigger(
                store_id=store_id,
                entered=store_id in entered,
                dwell_s=ts - visit.entered_at,
                prev_dwell_s=prev_dwell,
                distance_m=fence.distance_m(lat, lng),
            )
        )
    return out


class Stepper:
    """The state step of one ping (DESIGN §4 steps 2-4), run by the state store on the
    device's current state; it may run more than once (compare-and-set retries)."""

    __slots__ = (
        "campaigns", "fix", "inaccurate", "index", "matches", "now", "pid", "ping", "settings",
    )  # fmt: skip

    def __init__(
        self, ctx: PingContext, ping: PingIn, pid: str, campaigns: CampaignSet, now: float
    ) -> None:
        self.settings = ctx.settings
        self.ping = ping
        self.pid = pid
        self.campaigns = campaigns
        self.now = now
        index = ctx.holder.index
        assert index is not None, "pings are only routed once the index is loaded"
        self.index = index
        self.inaccurate = ping.accuracy_m > ctx.settings.max_accuracy_m
        self.matches = None if self.inaccurate else index.match(ping.lat, ping.lng)
        ts = ping.timestamp.timestamp()
        self.fix = None if self.inaccurate else Fix(ping.lat, ping.lng, ts, ping.accuracy_m)

    def _visit(
        self,
        state: DeviceState | None,
        reason: Reason,
        events: list[dict[str, Any]] | None = None,
        screen: Screen | None = None,
    ) -> Visit:
        events = events or []
        doc = state.to_doc() if state is not None else None
        if screen is not None and screen.candidates:
            reason = Reason.IN_PROGRESS
        answer = answer_bytes(self.pid, events, reason)
        if not events:  # the steady ping: nothing to record
            return Visit(doc, reason, answer, events, screen)
        return Visit(doc, reason, answer, events, screen, self._records(events))

    def _records(self, events: list[dict[str, Any]]) -> tuple[Event, ...]:
        """The step's visit events for the log: ids stable per device, ping and store (a
        retried ping makes the same ones); the store's tags from the fence index."""
        ping = self.ping
        out = []
        for e in events:
            fence = self.index.get(e["store_id"])
            out.append(
                visit_event(
                    e["type"], device_id=ping.device_id, user_id=ping.user_id,
                    store_id=e["store_id"], ping_key=self.pid, occurred_at=ping.timestamp,
                    store_tags=fence.tags if fence is not None else (), dwell_s=e.get("dwell_s"),
                )
            )  # fmt: skip
        return tuple(out)

    def __call__(self, doc: dict[str, Any] | None) -> Visit:
        """The visit step, then the trust step: the fix judged against the device's last
        accepted one (``"f"`` in the state document, beside the visits), which it replaces
        only when plausible."""
        visit = self._step(doc)
        if visit.state is None:  # nothing changes (out of order)
            return visit
        prev = Fix.from_doc(doc.get("f")) if doc is not None else None
        judged = judge_fix(prev, self.fix, self.ping.mocked, self.settings.max_speed_kmh)
        if judged.last is not None:
            visit.state["f"] = judged.last.to_doc()
        if judged.failed is None or not visit.pending:
            return visit
        return replace(visit, spoofed=judged.failed)

    def _step(self, doc: dict[str, Any] | None) -> Visit:
        ping, settings = self.ping, self.settings
        ts = ping.timestamp.timestamp()
        state = DeviceState.from_doc(doc) if doc is not None else None
        if state is not None and ts < state.last_ts:
            return self._visit(None, Reason.OUT_OF_ORDER)
        if self.inaccurate:
            if state is None:
                state = DeviceState(last_ts=ts)
            state.last_ts = ts
            return self._visit(state, Reason.LOW_ACCURACY)
        new_state, events = step(
            state,
            self.index,
            ping.lat,
            ping.lng,
            ts,
            dwell_s=settings.dwell_s,
            state_ttl_s=settings.state_ttl_s,
            exit_margin_m=settings.exit_margin_m,
            matches=self.matches,
        )
        event_docs = [e.to_dict() for e in events]
        if self.now - ts > settings.offer_max_age_s:
            return self._visit(new_state, Reason.STALE_PING, event_docs)
        if state is not None and ts - state.last_ts > settings.state_ttl_s:
            state = None
        campaigns = self.campaigns
        triggers = _triggers(state, new_state, events, ts, self.index, ping.lat, ping.lng)
        if triggers and campaigns.any_fires(triggers):
            when = datetime.fromtimestamp(self.now, UTC)
            screen = campaigns.screen(self.index, triggers, ping.channel, when)
            reason = screened_reason(campaigns, screen)
            return self._visit(new_state, reason, event_docs, screen)
        if not campaigns.live and any(e.type in ("enter", "dwell") for e in events):
            return self._visit(new_state, Reason.NO_CAMPAIGN, event_docs)
        return self._visit(new_state, Reason.NO_TRIGGER, event_docs)


async def step_visit(
    ctx: PingContext, stepper: Stepper, user_key: str
) -> Stored[Visit] | Replayed | ConsentDenied:
    """Step the device's state for this ping in the state store (one round trip in the
    steady state), or replay the ping's first answer."""
    # No fence here (or too inaccurate to tell): the outcome is the same for every state
    # without a visit, so the store need not read the state first (StateStore.process).
    ts = stepper.ping.timestamp.timestamp()
    idle_at = None if stepper.matches else ts
    return await ctx.store.process(stepper.ping.device_id, stepper.pid, stepper, user_key, idle_at)


async def process_ping(
    ctx: PingContext, ping: PingIn, now: float | None = None, explain: bool = False
) -> bytes:
    """Process one (already validated, not future) ping; returns the JSON answer."""
    now = time.time() if now is None else now
    pid = ping_key(ping)
    user_key = ping.user_id or ping.device_id
    campaigns = ctx.campaigns.current
    stepper = Stepper(ctx, ping, pid, campaigns, now)
    try:
        outcome = await step_visit(ctx, stepper, user_key)
    except StateUnavailable as exc:
        log.warning(
            "device state unavailable", extra={"event": "state_unavailable", "error": str(exc)}
        )
        return _answered(Reason.STATE_UNAVAILABLE, answer_bytes(pid, [], Reason.STATE_UNAVAILABLE))
    match outcome:
        case ConsentDenied():
            reason = Reason.CONSENT_DENIED
            return _answered(reason, answer_bytes(pid, [], reason))
        case Replayed(pending=True):
            replay = await _await_final(ctx, ping.device_id, pid, outcome)
            return _answered(Reason(replay.reason), replay.answer)
        case Replayed():
            return _answered(Reason(outcome.reason), outcome.answer)
        case Stored(result=visit) if visit.pending:
            assert visit.screen is not None
            ref = PingRef(ping.device_id, user_key, pid, ping.channel, ping.user_id)
            decision = await _decide_and_issue(
                ctx, campaigns, ref, visit.screen, now, visit.spoofed
            )
            offer = decision.offer.to_doc() if decision.offer is not None else None
            final = answer_bytes(pid, visit.events, decision.reason, offer)
            try:
                await ctx.store.finish(ping.device_id, pid, decision.reason, final)
            except StateUnavailable:
                log.warning("final answer not stored; a retry will see the provisional one")
            if explain:
                final = answer_bytes(pid, visit.events, decision.reason, offer, decision.decisions)
            return _answered(decision.reason, final)
        case Stored(result=visit):
            if explain:
                decisions = decisions_doc(visit.screen.reasons) if visit.screen else []
                body = answer_bytes(pid, visit.events, visit.reason, None, decisions)
                return _answered(visit.reason, body)
            return _answered(visit.reason, visit.answer)
    raise AssertionError(f"unexpected outcome {outcome!r}")


def _answered(reason: Reason, body: bytes) -> bytes:
    observe_ping(reason)
    return body


async def _decide_and_issue(
    ctx: PingContext,
    campaigns: CampaignSet,
    ref: PingRef,
    screen: Screen,
    now: float,
    spoofed: TrustCheck | None,
) -> Decision:
    when = datetime.fromtimestamp(now, UTC)
    verdict = await decide(ctx.offers, campaigns, ref, screen, when, spoofed)
    if isinstance(verdict, Decision):
        return verdict
    return await issue(ctx.offers, verdict, ref, ctx.holder.index, when)


async def _await_final(ctx: PingContext, device_id: str, pid: str, first: Replayed) -> Replayed:
    """A retry of a ping whose offer decision is still running: wait briefly for it; if it
    does not come, the provisional answer (``in_progress``, no offer)."""
    for _ in range(_AWAIT_POLLS):
        await asyncio.sleep(_AWAIT_POLL_S)
        try:
            current = await ctx.store.answer(device_id, pid)
        except StateUnavailable:
            break
        if current is not None and not current.pending:
            return current
    return Replayed(first.reason, first.answer, False)
