"""Deciding what one ping means: checks of DESIGN §4 step 2, then visit events.

Reason codes, in the order they are decided:

- ``out_of_order``: earlier than the device's last processed ping; nothing changes.
- ``low_accuracy``: ``accuracy_m`` above ``max_accuracy_m``; no events (the ping still
  counts as the device's last processed one).
- events are computed (enter / dwell / exit);
- ``stale_ping``: older than ``offer_max_age_s`` — its events are kept (an offline batch
  still records the visit) but it may never bring an offer;
- ``no_trigger``: no enter or dwell event;
- ``no_campaign``: an enter or dwell happened and there are no campaigns at all;
- otherwise the offer decision of :mod:`service.offers.service` (``offer_issued``,
  ``holdout``, ``capped``, …). That decision runs after the device's state step has been
  stored with a provisional answer, so a retry of the same ping that arrives meanwhile
  waits for the final answer instead of deciding twice.
- ``consent_denied``: the user withdrew location consent; the device's state is dropped.
- ``state_unavailable``: the device-state backend is down; no events, no offer, still 200.

A future ping (more than ``future_tolerance_s`` ahead of the server clock) is a 422.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from geofences.visits import DeviceState, VisitEvent, step
from service.campaigns.service import CampaignHolder, CampaignSet
from service.errors import FuturePing
from service.fences.live import IndexHolder
from service.locations.schemas import PingIn
from service.metrics import observe_ping
from service.offers.service import OfferContext, VisitTrigger, could_fire
from service.offers.service import decide as decide_offer
from service.settings import Settings
from service.state import StateStore, StateUnavailable

log = logging.getLogger("geo_offers.locations")

_PING_NS = uuid.UUID("5b0c8d3e-3f4a-4b8e-9a51-6c1f0f2f6a10")


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


def _answer(
    pid: str,
    events: list[dict[str, Any]],
    reason: str,
    offer: dict[str, Any] | None = None,
    pending: bool = False,
) -> bytes:
    body: dict[str, Any] = {"ping_id": pid, "events": events, "offer": offer, "reason": reason}
    if pending:
        body["pending"] = True
    return orjson.dumps(body)


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


async def process_ping(
    ctx: PingContext, ping: PingIn, now: float | None = None, explain: bool = False
) -> bytes:
    """Process one (already validated, not future) ping; returns the JSON answer."""
    body = await _process(ctx, ping, now, explain)
    observe_ping(_reason_of(body))
    return body


def _reason_of(body: bytes) -> str:
    # The answer is ours and flat: a byte search is far cheaper than parsing it again.
    start = body.find(b'"reason":"')
    if start < 0:
        return "unknown"
    start += 10
    return body[start : body.index(b'"', start)].decode()


async def _process(ctx: PingContext, ping: PingIn, now: float | None, explain: bool) -> bytes:
    settings = ctx.settings
    now = time.time() if now is None else now
    pid = ping_key(ping)
    ts = ping.timestamp.timestamp()
    index = ctx.holder.index
    assert index is not None, "pings are only routed once the index is loaded"
    user_key = ping.user_id or ping.device_id
    campaigns = ctx.campaigns.current
    outcome: dict[str, Any] = {}
    inaccurate = ping.accuracy_m > settings.max_accuracy_m
    matches = None if inaccurate else index.match(ping.lat, ping.lng)

    def decide(doc: dict[str, Any] | None) -> tuple[dict[str, Any] | None, bytes]:
        outcome.clear()
        state = DeviceState.from_doc(doc) if doc is not None else None
        if state is not None and ts < state.last_ts:
            return None, _answer(pid, [], "out_of_order")
        if inaccurate:
            if state is None:
                return DeviceState(last_ts=ts).to_doc(), _answer(pid, [], "low_accuracy")
            state.last_ts = ts
            return state.to_doc(), _answer(pid, [], "low_accuracy")
        new_state, events = step(
            state,
            index,
            ping.lat,
            ping.lng,
            ts,
            dwell_s=settings.dwell_s,
            state_ttl_s=settings.state_ttl_s,
            exit_margin_m=settings.exit_margin_m,
            matches=matches,
        )
        event_docs = [e.to_dict() for e in events]
        if now - ts > settings.offer_max_age_s:
            return new_state.to_doc(), _answer(pid, event_docs, "stale_ping")
        if state is not None and ts - state.last_ts > settings.state_ttl_s:
            state = None
        triggers = _triggers(state, new_state, events, ts, index, ping.lat, ping.lng)
        if triggers and could_fire(campaigns, triggers):
            provisional = _answer(pid, event_docs, "pending", pending=True)
            outcome.update(events=event_docs, triggers=triggers, body=provisional)
            return new_state.to_doc(), provisional
        if not campaigns.campaigns and any(e.type in ("enter", "dwell") for e in events):
            reason = "no_campaign"
        else:
            reason = "no_trigger"
        return new_state.to_doc(), _answer(pid, event_docs, reason)

    # No fence here (or too inaccurate to tell): the outcome is the same for every state
    # without a visit, so the store need not read the state first (StateStore.process).
    idle_at = None if matches else ts
    try:
        body = await ctx.store.process(ping.device_id, pid, decide, user_key, idle_at)
        if body is None:  # consent withdrawn: the store dropped and keeps nothing
            return _answer(pid, [], "consent_denied")
    except StateUnavailable as exc:
        log.warning(
            "device state unavailable", extra={"event": "state_unavailable", "error": str(exc)}
        )
        return _answer(pid, [], "state_unavailable")
    if outcome.get("body") is body:  # this call stored the provisional answer: decide now
        return await _finish(ctx, ping, pid, user_key, campaigns, index, outcome, now, explain)
    if b'"pending":true' in body:
        return await _await_final(ctx, ping.device_id, pid, body)
    return body


async def _finish(
    ctx: PingContext,
    ping: PingIn,
    pid: str,
    user_key: str,
    campaigns: CampaignSet,
    index: Any,
    outcome: dict[str, Any],
    now: float,
    explain: bool,
) -> bytes:
    decision = await decide_offer(
        ctx.offers,
        campaigns,
        index,
        device_id=ping.device_id,
        user_key=user_key,
        ping_key=pid,
        channel=ping.channel,
        triggers=outcome["triggers"],
        now=datetime.fromtimestamp(now, UTC),
    )
    final = _answer(pid, outcome["events"], decision.reason, decision.offer)
    try:
        await ctx.store.finish(ping.device_id, pid, final)
    except StateUnavailable:
        log.warning("final answer not stored; a retry will see the provisional one")
    if explain:
        doc = orjson.loads(final)
        doc["decisions"] = decision.decisions
        return orjson.dumps(doc)
    return final


async def _await_final(ctx: PingContext, device_id: str, pid: str, body: bytes) -> bytes:
    """A retry of a ping whose offer decision is still running: wait briefly for it."""
    for _ in range(40):
        await asyncio.sleep(0.05)
        try:
            current = await ctx.store.answer(device_id, pid)
        except StateUnavailable:
            break
        if current is not None and b'"pending":true' not in current:
            return current
    doc = orjson.loads(body)
    doc.pop("pending", None)
    doc["reason"] = "in_progress"
    return orjson.dumps(doc)
