"""The offer decision for a ping whose visits passed step 4, and the issuance of at most one
offer: DESIGN §4 steps 5-11, the steps that need the user's facts, the cap store and the
database.

Steps 1-4 are decided before any I/O: consent and the ping's own checks by the ping
pipeline (:mod:`service.locations.service`), step 4 by
:meth:`service.campaigns.live.CampaignSet.screen`. Here, per candidate campaign:

2. trust (DESIGN §11), for campaigns that do not opt out: ``suspected_spoofing`` when the
   ping's own checks failed (mocked, impossible travel: judged in its state step) or the
   device and user id are shared too widely (counted here, :class:`TrustChecker`);
5. audience: ``audience_not_included``, ``audience_excluded``;
6. exception events: ``exception_event``;
7-9. rollout first (``not_in_rollout``: a user outside a campaign's rollout must not use up
   caps for it), then caps and budget counted atomically (``capped``, ``budget_exhausted``;
   the control arm counts against the user's caps as a virtual offer, not against the
   budget), then the holdout arm (``holdout``: recorded as exposed, no offer);
10. rank: priority, offer value, campaign id; campaigns after the winner: ``lower_priority``;
11. issue: ``offer_issued`` — rendered, coded, committed to the database before the answer
    (:mod:`service.offers.issuance`).

Backend trouble (database or cap store unreachable) fails closed: ``unavailable``, no offer;
caps and budget taken for rows that were not written are given back.
"""

from __future__ import annotations

import base64
import logging
import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import anyio.to_thread
from sqlalchemy import Engine

from service.batching import Batcher
from service.campaigns import rules
from service.campaigns.live import CampaignSet, LiveCampaign, Screen, VisitTrigger
from service.caps.base import CapRequest, CapStore, CapUnavailable
from service.events.types import offer_held_out, offer_issued
from service.ids import uuid5_hex
from service.metrics import observe_cap_rejection, observe_offer
from service.offers.issuance import Exposure, GroupCommitter, Issuance, IssuanceFailed
from service.offers.pool import OfferPool
from service.reasons import Reason, furthest
from service.trust.checks import TrustCheck, TrustChecker, TrustUnavailable, count_failure
from service.users.repository import FACTS_SQL, Facts, facts_from_rows
from service.users.service import load_facts_inputs

log = logging.getLogger("geo_offers.offers")

_OFFER_NS = uuid.UUID("0b7f3c52-3c1e-4a7e-8f35-7d8f5d3c9e21")
#: How far back events are read for derived facts and exception windows.
FACTS_LOOKBACK = timedelta(days=35)

Attributes = dict[str, Any]
Events = list[tuple[str, datetime]]


class FactsReader(Protocol):
    async def load(self, user_key: str, since: datetime) -> tuple[Attributes, Events]:
        """The user's attributes and the events the rules need, in one round trip."""
        ...


class PostgresFacts:
    """One prepared statement on psycopg's async pool; the users of concurrent pings are
    read together (:class:`service.batching.Batcher`)."""

    def __init__(self, pool: OfferPool, max_batch: int = 256) -> None:
        self.pool = pool
        self._batcher: Batcher[tuple[str, datetime], Facts] = Batcher(
            self._read, max_batch, max_in_flight=2
        )

    async def load(self, user_key: str, since: datetime) -> tuple[Attributes, Events]:
        return await self._batcher.submit((user_key, since))

    async def _read(self, batch: Sequence[tuple[str, datetime]]) -> list[Facts]:
        users = list(dict.fromkeys(u for u, _ in batch))
        # The earliest lookback of the batch (they differ by microseconds): an event at the
        # edge is then "recent" rather than "latest before", which no rule tells apart.
        since = min(s for _, s in batch)
        async with self.pool.connection() as conn:
            cur = await conn.execute(FACTS_SQL, {"u": users, "since": since}, prepare=True)
            found = dict(zip(users, facts_from_rows(users, await cur.fetchall()), strict=True))
        return [found[u] for u, _ in batch]


class ThreadFacts:
    """The embedded default: SQLAlchemy in a worker thread."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def load(self, user_key: str, since: datetime) -> tuple[Attributes, Events]:
        return await anyio.to_thread.run_sync(load_facts_inputs, self.engine, user_key, since)


@dataclass(frozen=True, slots=True)
class OfferContext:
    facts: FactsReader
    caps: CapStore
    committer: GroupCommitter
    trust: TrustChecker


@dataclass(frozen=True, slots=True)
class PingRef:
    """The ping an offer decision is for."""

    device_id: str
    user_key: str  # user_id, else device_id
    ping_key: str
    channel: str | None
    user_id: str | None = None  # as sent (the sharing checks need one)


@dataclass(frozen=True, slots=True)
class Offer:
    """An issued offer, as answered (DESIGN §5)."""

    offer_id: str
    campaign_id: str
    coupon_code: str
    title: str
    message: str
    value: float
    channel: str
    expires_at: datetime
    store_id: str
    store_name: str
    distance_m: float

    def to_doc(self) -> dict[str, Any]:
        return {
            "offer_id": self.offer_id,
            "campaign_id": self.campaign_id,
            "coupon_code": self.coupon_code,
            "title": self.title,
            "message": self.message,
            "value": self.value,
            "channel": self.channel,
            "expires_at": self.expires_at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
            "store": {"store_id": self.store_id, "name": self.store_name},
            "distance_m": round(self.distance_m, 2),
        }


@dataclass(frozen=True, slots=True)
class Decision:
    reason: Reason
    offer: Offer | None
    decisions: list[dict[str, Any]]  # per campaign, for ``explain``


def decisions_doc(
    reasons: dict[str, Reason], extra: dict[str, dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    extra = extra or {}
    return [
        {"campaign_id": cid, "reason": r, **extra.get(cid, {})}
        for cid, r in sorted(reasons.items())
    ]


def screened_reason(campaigns: CampaignSet, screen: Screen) -> Reason:
    """The answer of a ping none of whose campaigns passed step 4."""
    if not screen.reasons:
        return Reason.NO_CAMPAIGN
    return furthest(screen.reasons.values())


def _coupon_code(campaign: LiveCampaign) -> tuple[str, bool]:
    coupon = campaign.campaign.offer.coupon
    if coupon.type == "fixed":
        return str(coupon.code), True
    # 80 random bits, base32 without padding: 16 characters, no 0/1/8/9 ambiguity.
    return f"{coupon.prefix}{base64.b32encode(secrets.token_bytes(10)).decode()}", False


@dataclass(frozen=True, slots=True)
class Pick:
    """The campaign a decision picked for this ping, its caps and budget counted."""

    campaign: LiveCampaign
    trigger: VisitTrigger
    treatment: bool  # False: the holdout arm (exposure only)
    offer_id: str
    counted: CapRequest | None  # what to give back if the rows cannot be written


@dataclass(frozen=True, slots=True)
class Verdict:
    """Steps 5-10 done: a pick to issue, and every other campaign's reason."""

    pick: Pick
    attributes: Attributes
    reasons: dict[str, Reason]
    extra: dict[str, dict[str, Any]]


async def decide(
    ctx: OfferContext,
    campaigns: CampaignSet,
    ping: PingRef,
    screen: Screen,
    now: datetime,
    spoofed: TrustCheck | None = None,
) -> Verdict | Decision:
    """Trust and steps 5-10 for the candidates of ``screen`` (at least one): a
    :class:`Verdict` to issue, or the :class:`Decision` when no campaign got that far.
    ``spoofed``: the ping's own trust check that failed, if any."""
    reasons = dict(screen.reasons)
    extra: dict[str, dict[str, Any]] = {}
    user_key = ping.user_key
    try:
        attrs, events = await ctx.facts.load(user_key, now - FACTS_LOOKBACK)
    except Exception:
        log.exception("user facts unavailable")
        for lc, _ in screen.candidates:
            reasons[lc.id] = Reason.UNAVAILABLE
        return _no_offer(reasons, extra)
    if attrs.get("location_consent") is False:
        return Decision(Reason.CONSENT_DENIED, None, [])
    candidates = await _trusted(ctx, ping, screen.candidates, now, spoofed, reasons, extra)
    facts = rules.derive_facts(attrs, events, now)
    eligible: dict[LiveCampaign, VisitTrigger] = {}
    for lc, t in candidates:
        c = lc.campaign
        r = rules.audience_reason(c.audience, facts) or rules.exception_reason(
            c.exceptions, events, now
        )
        if r is not None:
            reasons[lc.id] = r
        else:
            eligible[lc] = t

    pick: Pick | None = None
    for lc in sorted(eligible, key=lambda x: (-x.campaign.priority, -x.campaign.offer.value, x.id)):
        c = lc.campaign
        if pick is not None:
            reasons[lc.id] = Reason.LOWER_PRIORITY
            continue
        arm = rules.assign_arm(c, user_key)
        if arm == "not_in_rollout":
            reasons[lc.id] = Reason.NOT_IN_ROLLOUT
            continue
        offer_id = uuid5_hex(_OFFER_NS, f"{ping.device_id}|{ping.ping_key}|{c.id}")
        treatment = arm == "treatment"
        req = CapRequest(
            user_key=user_key,
            campaign_id=c.id,
            channel=c.channel,
            issue_id=offer_id,
            now=now.timestamp(),
            campaign_caps=lc.caps,
            global_caps=campaigns.global_caps,
            channel_caps=campaigns.channel_caps.get(c.channel, ()),
            min_gap_s=campaigns.min_gap_s,
            budget_total=c.budget.total if treatment else None,
            budget_per_day=c.budget.per_day if treatment else None,
            budget_day=now.astimezone(UTC).date().isoformat(),
        )
        counted = req.retention_ms > 0 or req.has_budget  # else nothing to count
        if counted:
            try:
                res = await ctx.caps.acquire(req)
            except CapUnavailable:
                log.warning("cap store unavailable: no offer (fail closed)")
                reasons[lc.id] = Reason.UNAVAILABLE
                return _no_offer_after(reasons, extra, eligible, lc)
            if not res.ok:
                reasons[lc.id] = Reason(res.reason or Reason.CAPPED)
                if res.cap:
                    extra[lc.id] = {"cap": res.cap}
                    observe_cap_rejection(res.cap)
                continue
        pick = Pick(lc, eligible[lc], treatment, offer_id, req if counted else None)
    if pick is None:
        return _no_offer(reasons, extra)
    return Verdict(pick, attrs, reasons, extra)


async def _trusted(
    ctx: OfferContext,
    ping: PingRef,
    candidates: Sequence[tuple[LiveCampaign, VisitTrigger]],
    now: datetime,
    spoofed: TrustCheck | None,
    reasons: dict[str, Reason],
    extra: dict[str, dict[str, Any]],
) -> list[tuple[LiveCampaign, VisitTrigger]]:
    """The candidates trust leaves (DESIGN §11): all, unless a check fails — then only the
    campaigns that opt out (``trust_checks: false``). The sharing counts are read and
    recorded only when the ping's own checks passed and some campaign checks trust."""
    opted_out = [(lc, t) for lc, t in candidates if not lc.campaign.trust_checks]
    if len(opted_out) == len(candidates):
        return opted_out
    failed = spoofed
    if failed is None and ping.user_id is not None:
        try:
            failed = await ctx.trust.sharing(ping.device_id, ping.user_id, now.timestamp())
        except TrustUnavailable:
            log.warning("trust store unavailable: no offer from campaigns that check trust")
            for lc, _ in candidates:
                if lc.campaign.trust_checks:
                    reasons[lc.id] = Reason.UNAVAILABLE
            return opted_out
    if failed is None:
        return list(candidates)
    count_failure(failed)
    for lc, _ in candidates:
        if lc.campaign.trust_checks:
            reasons[lc.id] = Reason.SUSPECTED_SPOOFING
            extra[lc.id] = {"check": failed}
    return opted_out


async def issue(
    ctx: OfferContext, verdict: Verdict, ping: PingRef, index: Any, now: datetime
) -> Decision:
    """Step 11: write the pick's rows (group commit) and answer only once they are in."""
    pick, reasons = verdict.pick, dict(verdict.reasons)
    lc, t = pick.campaign, pick.trigger
    c = lc.campaign
    exposure = Exposure(c.id, ping.user_key, "treatment" if pick.treatment else "control", now,
                        t.store_id)  # fmt: skip
    fence = index.get(t.store_id)
    tags = fence.tags if fence is not None else ()
    user_id = ping.user_key if ping.user_key != ping.device_id else None
    if not pick.treatment:
        held_out = offer_held_out(
            campaign_id=c.id, store_id=t.store_id, device_id=ping.device_id, user_id=user_id,
            ping_key=ping.ping_key, occurred_at=now, store_tags=tags,
        )  # fmt: skip
        ok = await _write(ctx, pick.counted, Issuance(exposure, events=(held_out,)))
        reasons[lc.id] = Reason.HOLDOUT if ok else Reason.UNAVAILABLE
        return _no_offer(reasons, verdict.extra)
    store_name = fence.name if fence is not None else t.store_id
    code, fixed = _coupon_code(lc)
    store = {"store_id": t.store_id, "name": store_name}
    offer = Offer(
        offer_id=pick.offer_id,
        campaign_id=c.id,
        coupon_code=code,
        title=c.offer.title,
        message=rules.render(lc.template, verdict.attributes, store),
        value=float(c.offer.value),
        channel=c.channel,
        expires_at=now + timedelta(seconds=int(c.offer.expires_in)),
        store_id=t.store_id,
        store_name=store_name,
        distance_m=t.distance_m,
    )
    row = {
        "offer_id": offer.offer_id, "campaign_id": c.id, "user_key": ping.user_key,
        "device_id": ping.device_id, "store_id": t.store_id, "channel": c.channel,
        "coupon_code": code, "fixed_code": fixed, "title": offer.title,
        "message": offer.message, "value": offer.value, "distance_m": t.distance_m,
        "ping_id": ping.ping_key, "issued_at": now, "expires_at": offer.expires_at,
    }  # fmt: skip
    issued = offer_issued(
        offer_id=offer.offer_id, campaign_id=c.id, store_id=t.store_id,
        device_id=ping.device_id, user_id=user_id, ping_key=ping.ping_key, channel=c.channel,
        coupon_code=code, title=offer.title, message=offer.message, value=offer.value,
        issued_at=now, expires_at=offer.expires_at, store_tags=tags,
    )  # fmt: skip
    # Never an unrecorded coupon: without the committed row there is no offer.
    if not await _write(ctx, pick.counted, Issuance(exposure, row, (issued,))):
        reasons[lc.id] = Reason.UNAVAILABLE
        return _no_offer(reasons, verdict.extra)
    reasons[lc.id] = Reason.OFFER_ISSUED
    observe_offer(c.id)
    return Decision(Reason.OFFER_ISSUED, offer, decisions_doc(reasons, verdict.extra))


def _no_offer_after(
    reasons: dict[str, Reason],
    extra: dict[str, dict[str, Any]],
    ranked: dict[LiveCampaign, VisitTrigger],
    stopped_at: LiveCampaign,
) -> Decision:
    """Fail closed at ``stopped_at``: the campaigns ranked after it were not tried."""
    order = sorted(ranked, key=lambda x: (-x.campaign.priority, -x.campaign.offer.value, x.id))
    for lc in order[order.index(stopped_at) + 1 :]:
        reasons[lc.id] = Reason.LOWER_PRIORITY
    return _no_offer(reasons, extra)


async def _write(ctx: OfferContext, req: CapRequest | None, item: Issuance) -> bool:
    """Commit ``item``; on failure give back what ``req`` took, unless the rows may be in."""
    try:
        await ctx.committer.issue(item)
        return True
    except IssuanceFailed as exc:
        if exc.committed:
            return True
        log.warning("issuance not recorded (%s): no offer", exc)
        if exc.committed is False and req is not None:
            try:
                await ctx.caps.release(req)
            except CapUnavailable:
                log.warning("caps not released (store unavailable); they expire with their window")
        return False


def _no_offer(reasons: dict[str, Reason], extra: dict[str, dict[str, Any]]) -> Decision:
    if not reasons:
        return Decision(Reason.NO_CAMPAIGN, None, [])
    return Decision(furthest(reasons.values()), None, decisions_doc(reasons, extra))
