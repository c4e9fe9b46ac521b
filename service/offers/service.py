"""The eligibility pipeline of DESIGN §4 and the issuance of at most one offer per ping.

Order, each step with its reason code (the campaign's ``decisions`` entry under
``?explain=true``):

1. consent: ``consent_denied`` (checked before any state is touched; see locations);
2. the ping: ``low_accuracy``, ``stale_ping``, ``out_of_order`` (locations);
3. trigger: no enter event and no dwell crossing → ``no_trigger`` for the ping;
4. campaign: ``channel_mismatch`` (the ping names another channel), ``not_targeted``
   (checked first: a schedule answer for a store the campaign does not run at would
   mislead), ``campaign_paused``, ``not_started``, ``ended``, ``outside_schedule``,
   ``quiet_hours`` (store local time), ``trigger_mismatch``;
5. audience: ``audience_not_included``, ``audience_excluded``;
6. exception events: ``exception_event``;
7-9. rollout is checked first (``not_in_rollout``: a user outside a campaign's rollout must
   not use up caps for it), then caps and budget are counted atomically (``capped``,
   ``budget_exhausted``; the control arm counts against the user's caps as a virtual offer,
   not against the budget), then the holdout arm (``holdout``: recorded as exposed, no
   offer);
10. rank: priority, offer value, campaign id; campaigns after the winner: ``lower_priority``;
11. issue: ``offer_issued`` — rendered, coded, written to the database before the answer.
Backend trouble (database or cap store unreachable) fails closed: ``unavailable``, no offer.

A dwell campaign triggers once per visit: at the first ping whose time inside (by ping
timestamps) reaches its ``dwell_s``.
"""

from __future__ import annotations

import base64
import logging
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio.to_thread
from sqlalchemy import Engine

from geofences import FenceIndex
from service.campaigns import rules
from service.campaigns.service import CampaignSet
from service.campaigns.spec import Campaign
from service.caps.base import Cap, CapRequest, CapStore, CapUnavailable
from service.metrics import observe_cap_rejection, observe_offer
from service.offers import repository as repo
from service.users.service import load_facts_inputs

log = logging.getLogger("geo_offers.offers")

_OFFER_NS = uuid.UUID("0b7f3c52-3c1e-4a7e-8f35-7d8f5d3c9e21")
#: How far back events are read for derived facts and exception windows.
FACTS_LOOKBACK = timedelta(days=35)

ORDER = (
    "not_targeted", "channel_mismatch", "campaign_paused", "not_started", "ended",
    "outside_schedule", "quiet_hours", "trigger_mismatch", "audience_not_included",
    "audience_excluded", "exception_event", "not_in_rollout", "capped", "budget_exhausted",
    "lower_priority", "holdout", "unavailable", "offer_issued",
)  # fmt: skip
_RANK = {r: i for i, r in enumerate(ORDER)}


@dataclass(frozen=True, slots=True)
class VisitTrigger:
    """A fence the device is inside after this ping."""

    store_id: str
    entered: bool  # this ping is the enter
    dwell_s: float  # time inside at this ping, by ping timestamps
    prev_dwell_s: float | None  # time inside at the previous ping (None: entered now)
    distance_m: float


@dataclass(frozen=True, slots=True)
class Decision:
    offer: dict[str, Any] | None
    reason: str
    decisions: list[dict[str, Any]]


def fires(campaign: Campaign, t: VisitTrigger) -> bool:
    trig = campaign.trigger
    if trig.type == "enter":
        return t.entered
    need = float(trig.dwell_s or 0)
    before = -1.0 if t.prev_dwell_s is None else t.prev_dwell_s
    return before < need <= t.dwell_s


def could_fire(campaigns: CampaignSet, triggers: list[VisitTrigger]) -> bool:
    """Cheap pre-check on the hot path: is there anything to decide at all?"""
    return any(fires(c, t) for c in campaigns.campaigns for t in triggers)


def _furthest(reasons: list[str]) -> str:
    return max(reasons, key=lambda r: _RANK.get(r, -1))


def _caps(specs: Any) -> tuple[Cap, ...]:
    return tuple(Cap(count=c.count, window_s=int(c.window)) for c in specs or ())


def _coupon_code(campaign: Campaign) -> tuple[str, bool]:
    coupon = campaign.offer.coupon
    if coupon.type == "fixed":
        return str(coupon.code), True
    # 80 random bits, base32 without padding: 16 characters, no 0/1/8/9 ambiguity.
    return f"{coupon.prefix}{base64.b32encode(secrets.token_bytes(10)).decode()}", False


@dataclass
class OfferContext:
    engine: Engine
    caps: CapStore


async def decide(
    ctx: OfferContext,
    campaigns: CampaignSet,
    index: FenceIndex,
    *,
    device_id: str,
    user_key: str,
    ping_key: str,
    channel: str | None,
    triggers: list[VisitTrigger],
    now: datetime,
) -> Decision:
    """Run steps 4-11 for one ping whose triggers :func:`could_fire`."""
    policies = campaigns.policies
    reasons: dict[str, str] = {}
    extra: dict[str, dict[str, Any]] = {}
    staged: list[tuple[Campaign, VisitTrigger]] = []
    by_distance = sorted(triggers, key=lambda t: (t.distance_m, t.store_id))
    for c in campaigns.campaigns:
        if channel is not None and c.channel != channel:
            reasons[c.id] = "channel_mismatch"
            continue
        seen: list[str] = []
        for t in by_distance:
            fence = index.get(t.store_id)
            if fence is None:
                continue
            # Targeting first: "outside_schedule" would be a misleading answer for a store
            # the campaign does not run at.
            r = None if rules.targets(c, fence.store_id, fence.tags) else "not_targeted"
            if r is None:
                r = rules.schedule_reason(c, policies, now, fence.timezone)
            if r is None and not fires(c, t):
                r = "trigger_mismatch"
            if r is None:
                staged.append((c, t))
                break
            seen.append(r)
        else:
            reasons[c.id] = _furthest(seen) if seen else "not_targeted"
    if not staged:
        return _no_offer(reasons, extra)

    try:
        attrs, events = await anyio.to_thread.run_sync(
            load_facts_inputs, ctx.engine, user_key, now - FACTS_LOOKBACK
        )
    except Exception:
        log.exception("user facts unavailable")
        for c, _ in staged:
            reasons[c.id] = "unavailable"
        return _no_offer(reasons, extra)
    if attrs.get("location_consent") is False:
        return Decision(None, "consent_denied", [])
    facts = rules.derive_facts(attrs, events, now)
    eligible: dict[str, tuple[Campaign, VisitTrigger]] = {}
    for c, t in staged:
        r = rules.audience_reason(c.audience, facts) or rules.exception_reason(
            c.exceptions, events, now
        )
        if r is not None:
            reasons[c.id] = r
        else:
            eligible[c.id] = (c, t)

    offer: dict[str, Any] | None = None
    final: str | None = None
    for c in rules.rank([c for c, _ in eligible.values()]):
        if final is not None:
            reasons[c.id] = "lower_priority"
            continue
        t = eligible[c.id][1]
        arm = rules.assign_arm(c, user_key)
        if arm == "not_in_rollout":
            reasons[c.id] = "not_in_rollout"
            continue
        offer_id = uuid.uuid5(_OFFER_NS, f"{device_id}|{ping_key}|{c.id}").hex
        treatment = arm == "treatment"
        req = CapRequest(
            user_key=user_key,
            campaign_id=c.id,
            channel=c.channel,
            issue_id=offer_id,
            now=now.timestamp(),
            campaign_caps=_caps(c.caps),
            global_caps=_caps(policies.caps),
            channel_caps=_caps(policies.channel_caps.get(c.channel, ())),
            min_gap_s=int(policies.min_gap) if policies.min_gap else None,
            budget_total=c.budget.total if treatment else None,
            budget_per_day=c.budget.per_day if treatment else None,
            budget_day=now.astimezone(UTC).date().isoformat(),
        )
        try:
            res = await ctx.caps.acquire(req)
        except CapUnavailable:
            log.warning("cap store unavailable: no offer (fail closed)")
            reasons[c.id] = final = "unavailable"
            continue
        if not res.ok:
            reasons[c.id] = res.reason or "capped"
            if res.cap:
                extra[c.id] = {"cap": res.cap}
                observe_cap_rejection(res.cap)
            continue
        fence = index.get(t.store_id)
        store_name = fence.name if fence is not None else t.store_id
        if not treatment:
            try:
                await anyio.to_thread.run_sync(
                    _write_exposure, ctx.engine, c.id, user_key, now, t.store_id
                )
            except Exception:
                log.exception("exposure not recorded")
                await _release(ctx, req)
                reasons[c.id] = final = "unavailable"
                continue
            reasons[c.id] = final = "holdout"
            continue
        code, fixed = _coupon_code(c)
        store = {"store_id": t.store_id, "name": store_name}
        message = rules.render_message(c.offer.message, attrs, store)
        expires_at = now + timedelta(seconds=int(c.offer.expires_in))
        row = {
            "offer_id": offer_id, "campaign_id": c.id, "user_key": user_key,
            "device_id": device_id, "store_id": t.store_id, "channel": c.channel,
            "coupon_code": code, "fixed_code": fixed, "title": c.offer.title, "message": message,
            "value": float(c.offer.value), "distance_m": t.distance_m, "ping_id": ping_key,
            "issued_at": now, "expires_at": expires_at,
        }  # fmt: skip
        try:
            await anyio.to_thread.run_sync(_write_offer, ctx.engine, row)
        except Exception:
            # Never an unrecorded coupon: without the row there is no offer, and the caps
            # and budget it took are given back.
            log.exception("offer not recorded: no offer")
            await _release(ctx, req)
            reasons[c.id] = final = "unavailable"
            continue
        reasons[c.id] = final = "offer_issued"
        observe_offer(c.id)
        offer = {
            "offer_id": offer_id,
            "campaign_id": c.id,
            "coupon_code": code,
            "title": c.offer.title,
            "message": message,
            "value": float(c.offer.value),
            "channel": c.channel,
            "expires_at": expires_at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
            "store": store,
            "distance_m": round(t.distance_m, 2),
        }
    if offer is not None:
        return Decision(offer, "offer_issued", _decisions(reasons, extra))
    return _no_offer(reasons, extra)


async def _release(ctx: OfferContext, req: CapRequest) -> None:
    try:
        await ctx.caps.release(req)
    except CapUnavailable:
        log.warning("caps not released (store unavailable); they expire with their window")


def _write_offer(engine: Engine, row: dict[str, Any]) -> None:
    with engine.begin() as conn:
        repo.insert_offer(conn, row)
        repo.record_exposure(
            conn,
            row["campaign_id"],
            row["user_key"],
            "treatment",
            row["issued_at"],
            row["store_id"],
        )


def _write_exposure(
    engine: Engine, campaign_id: str, user_key: str, at: datetime, store_id: str
) -> None:
    with engine.begin() as conn:
        repo.record_exposure(conn, campaign_id, user_key, "control", at, store_id)


def _decisions(reasons: dict[str, str], extra: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {"campaign_id": cid, "reason": r, **extra.get(cid, {})}
        for cid, r in sorted(reasons.items())
    ]


def _no_offer(reasons: dict[str, str], extra: dict[str, dict[str, Any]]) -> Decision:
    if not reasons:
        return Decision(None, "no_campaign", [])
    return Decision(None, _furthest(list(reasons.values())), _decisions(reasons, extra))
