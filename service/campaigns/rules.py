"""The eligibility rules of DESIGN §4 as pure functions, each answering with a reason code.

Nothing here touches a database, Redis or the clock: callers pass ``now``, the user's
attributes and events, and the store's time zone. The pipeline that runs the steps in
order, counts caps and issues offers lives in :mod:`service.offers.service`.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo

from liquid import BoundTemplate
from liquid.exceptions import LiquidError

from service.campaigns.spec import (
    DAYS,
    MESSAGE_ENV,
    Audience,
    Campaign,
    Condition,
    ExceptionRule,
    Policies,
    Schedule,
    Trigger,
)
from service.reasons import Reason, furthest

__all__ = [
    "BILLING_ISSUE_EVENTS",
    "EVENT_CLOCK_SKEW",
    "Arm",
    "assign_arm",
    "audience_reason",
    "bucket",
    "compile_message",
    "condition_holds",
    "derive_facts",
    "exception_reason",
    "furthest_of",
    "in_schedule",
    "rank",
    "render",
    "render_message",
    "schedule_reason",
    "targets",
    "trigger_reason",
]

log = logging.getLogger("geo_offers.campaigns")


Arm = Literal["not_in_rollout", "control", "treatment"]

#: Events stamped up to this far after ``now`` still count: device and backend clocks
#: differ, and a purchase "in the future" by a minute did happen.
EVENT_CLOCK_SKEW = timedelta(minutes=5)
#: Event types that mean a payment problem, for ``days_since_billing_issue``.
BILLING_ISSUE_EVENTS = frozenset({"billing_issue", "payment_failed"})
SIGNUP_EVENT = "signup"
PURCHASE_EVENT = "purchase"
TICKET_OPENED_EVENT = "support_ticket_opened"
TICKET_CLOSED_EVENT = "support_ticket_closed"

_DAY_S = 86_400.0
_NUMBER = (int, float)


# --- facts ---------------------------------------------------------------------------


def _utc(moment: datetime) -> datetime:
    """Aware UTC; a naive datetime is taken to be UTC already."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def _instant(value: object) -> datetime | None:
    """A datetime from a datetime, a date or an ISO 8601 string; None if unreadable."""
    if isinstance(value, datetime):
        return _utc(value)
    if isinstance(value, date):
        return datetime.combine(value, time(), UTC)
    if isinstance(value, str):
        try:
            return _utc(datetime.fromisoformat(value.strip()))
        except ValueError:
            return None
    return None


def _days_between(earlier: datetime, now: datetime) -> float:
    # Clamped: a timestamp a little ahead of our clock is "just now", not negative age.
    return max(0.0, (now - earlier).total_seconds() / _DAY_S)


def derive_facts(
    attributes: Mapping[str, Any], events: Iterable[tuple[str, datetime]], now: datetime
) -> dict[str, Any]:
    """The user's attributes plus the facts derived from their events.

    Derived (days are float days at ``now``; a fact is absent when there is nothing
    to derive it from, except ``open_support_ticket`` and ``purchases_30d``):

    - ``account_age_days``: from attribute ``signup_at`` (ISO string or datetime), else
      the earliest ``signup`` event;
    - ``open_support_ticket``: the latest ``support_ticket_opened`` is later than the
      latest ``support_ticket_closed`` (False with no tickets);
    - ``days_since_last_purchase``: since the latest ``purchase`` event;
    - ``days_since_billing_issue``: since the latest ``billing_issue`` or
      ``payment_failed`` event;
    - ``purchases_30d``: ``purchase`` events in the last 30 days.

    Events more than :data:`EVENT_CLOCK_SKEW` after ``now`` are ignored. An attribute
    the backend set under one of these names wins over the derived value (it knows
    more than our event window does); attributes set to ``None`` are left out, so
    they read as missing in conditions.
    """
    now = _utc(now)
    horizon = now + EVENT_CLOCK_SKEW
    month_ago = now - timedelta(days=30)
    latest: dict[str, datetime] = {}
    first_signup: datetime | None = None
    purchases_30d = 0
    for kind, raw_at in events:
        at = _utc(raw_at)
        if at > horizon:
            continue
        if kind not in latest or at > latest[kind]:
            latest[kind] = at
        if kind == SIGNUP_EVENT and (first_signup is None or at < first_signup):
            first_signup = at
        if kind == PURCHASE_EVENT and at > month_ago:
            purchases_30d += 1

    derived: dict[str, Any] = {}
    signup = _instant(attributes.get("signup_at")) or first_signup
    if signup is not None:
        derived["account_age_days"] = _days_between(signup, now)
    opened, closed = latest.get(TICKET_OPENED_EVENT), latest.get(TICKET_CLOSED_EVENT)
    derived["open_support_ticket"] = opened is not None and (closed is None or opened > closed)
    if PURCHASE_EVENT in latest:
        derived["days_since_last_purchase"] = _days_between(latest[PURCHASE_EVENT], now)
    billing = [latest[k] for k in BILLING_ISSUE_EVENTS if k in latest]
    if billing:
        derived["days_since_billing_issue"] = _days_between(max(billing), now)
    derived["purchases_30d"] = purchases_30d
    return derived | {k: v for k, v in attributes.items() if v is not None}


# --- conditions and audience ---------------------------------------------------------


def _is_number(value: object) -> bool:
    return isinstance(value, _NUMBER) and not isinstance(value, bool) and math.isfinite(value)


def _equal(fact: object, wanted: object) -> bool:
    """Equality without Python's cross-type surprises (``True == 1``, ``1 == 1.0`` is fine)."""
    if isinstance(fact, bool) or isinstance(wanted, bool):
        return isinstance(fact, bool) and isinstance(wanted, bool) and fact is wanted
    if _is_number(fact) and _is_number(wanted):
        return fact == wanted
    return isinstance(fact, str) and isinstance(wanted, str) and fact == wanted


def _member(fact: object, options: object) -> bool:
    """``fact in options``; a list fact is a member when any of its items is."""
    if not isinstance(options, list | tuple):
        return False
    items = fact if isinstance(fact, list | tuple | set | frozenset) else (fact,)
    return any(_equal(item, option) for item in items for option in options)


def condition_holds(cond: Condition, facts: Mapping[str, Any]) -> bool:
    """Evaluate one condition; never raises.

    A field that is absent or ``None`` is *missing*: ``exists`` is False,
    ``not_exists``, ``ne`` and ``not_in`` are True, every other op is False.
    ``ne`` and ``not_in`` are the negations of ``eq`` and ``in``. Types must agree:
    strings compare case-sensitively with strings, numbers with numbers, booleans
    with booleans; a mismatch is simply "not equal" and fails ``gt``/``gte``/``lt``/
    ``lte``.
    """
    value = facts.get(cond.field)
    present = value is not None
    match cond.op:
        case "exists":
            return present
        case "not_exists":
            return not present
        case "ne":
            return not present or not _equal(value, cond.value)
        case "not_in":
            return not present or not _member(value, cond.value)
        case "eq":
            return present and _equal(value, cond.value)
        case "in":
            return present and _member(value, cond.value)
    if not (_is_number(value) and _is_number(cond.value)):
        return False
    match cond.op:
        case "gt":
            return bool(value > cond.value)
        case "gte":
            return bool(value >= cond.value)
        case "lt":
            return bool(value < cond.value)
        case "lte":
            return bool(value <= cond.value)
    return False


def audience_reason(audience: Audience, facts: Mapping[str, Any]) -> Reason | None:
    """None when every include holds and no exclude does."""
    if not all(condition_holds(c, facts) for c in audience.include):
        return Reason.AUDIENCE_NOT_INCLUDED
    if any(condition_holds(c, facts) for c in audience.exclude):
        return Reason.AUDIENCE_EXCLUDED
    return None


# --- time ----------------------------------------------------------------------------


@functools.lru_cache(maxsize=1024)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def _minute_of_day(local: datetime) -> float:
    return local.hour * 60 + local.minute + local.second / 60 + local.microsecond / 60e6


def in_schedule(schedule: Schedule, local: datetime) -> bool:
    """Whether the store-local wall-clock time ``local`` is inside ``schedule``.

    An overnight window belongs to the day it starts on: ``fri 22:00-02:00`` covers
    Saturday 01:00 but not Friday 01:00.
    """
    today = DAYS[local.weekday()]
    if not schedule.hours:
        return today in schedule.days
    yesterday = DAYS[(local.weekday() - 1) % 7]
    minute = _minute_of_day(local)
    for window in schedule.hours:
        if window.overnight:
            if minute >= window.start and today in schedule.days:
                return True
            if minute < window.end and yesterday in schedule.days:
                return True
        elif window.start <= minute < window.end and today in schedule.days:
            return True
    return False


def schedule_reason(
    campaign: Campaign, policies: Policies | None, now_utc: datetime, store_tz: str
) -> Reason | None:
    """Step 4's time checks: status, ``[starts_at, ends_at)``, schedule, quiet hours.

    Days and hours are the store's wall clock (``store_tz``, an IANA name), so on DST
    change days "07:00" is still 07:00 local. Raises ``ZoneInfoNotFoundError`` for an
    unknown zone (fences are validated on import, so that is a bug, not a user error).
    """
    if campaign.status != "active":
        return Reason.CAMPAIGN_PAUSED
    now = _utc(now_utc)
    if campaign.starts_at is not None and now < campaign.starts_at:
        return Reason.NOT_STARTED
    if campaign.ends_at is not None and now >= campaign.ends_at:
        return Reason.ENDED
    local = now.astimezone(_zone(store_tz))
    if not in_schedule(campaign.schedule, local):
        return Reason.OUTSIDE_SCHEDULE
    quiet = policies.quiet_hours if policies is not None else None
    if quiet is not None and quiet.covers(_minute_of_day(local)):
        return Reason.QUIET_HOURS
    return None


# --- store, trigger, exceptions ------------------------------------------------------


def targets(campaign: Campaign, store_id: str, tags: Iterable[str]) -> bool:
    """Whether the campaign runs at this store: no targeting, or its id or any tag matches.

    Store ids match exactly; tags ignore case ("Downtown" is "downtown").
    """
    targeting = campaign.targeting
    if not targeting.store_ids and not targeting.tags:
        return True
    if store_id in targeting.store_ids:
        return True
    wanted = {t.casefold() for t in targeting.tags}
    return any(t.casefold() in wanted for t in tags)


def trigger_reason(
    trigger: Trigger, event_type: Literal["enter", "dwell"], dwell_s: float
) -> Reason | None:
    """Enter campaigns fire on enter; dwell campaigns once the visit lasted ``dwell_s``.

    ``dwell_s`` is the visit's time inside so far, whatever event this ping produced.
    Firing only once per visit is the caller's job (it knows the previous ping).
    """
    if trigger.type == "enter":
        return None if event_type == "enter" else Reason.TRIGGER_MISMATCH
    if trigger.dwell_s is not None and dwell_s >= trigger.dwell_s:
        return None
    return Reason.TRIGGER_MISMATCH


def exception_reason(
    exceptions: Iterable[ExceptionRule], events: Iterable[tuple[str, datetime]], now: datetime
) -> Reason | None:
    """``exception_event`` if a listed event happened in ``[now - within, now + skew]``."""
    rules = list(exceptions)
    if not rules:
        return None
    now = _utc(now)
    horizon = now + EVENT_CLOCK_SKEW
    for kind, at in events:
        moment = _utc(at)
        if moment > horizon:
            continue
        if any(r.event == kind and moment >= now - timedelta(seconds=r.within) for r in rules):
            return Reason.EXCEPTION_EVENT
    return None


# --- rollout, holdout, rank ----------------------------------------------------------


def bucket(campaign_id: str, user_key: str, salt: str = "") -> float:
    """A stable position in ``[0, 100)`` for this user and campaign.

    SHA-256 of ``f"{campaign_id}:{user_key}"`` (``f"{salt}:{campaign_id}:{user_key}"``
    with a salt): the same on every replica and every run, unlike ``hash()``.
    """
    key = f"{campaign_id}:{user_key}" if not salt else f"{salt}:{campaign_id}:{user_key}"
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * 100


def assign_arm(campaign: Campaign, user_key: str) -> Arm:
    """``not_in_rollout``, ``control`` (holdout: exposed, no offer) or ``treatment``.

    The holdout uses an independent hash, so ``holdout_pct`` is a share of the users
    *in* the rollout, and widening the rollout never moves anyone between arms.
    """
    if bucket(campaign.id, user_key) >= campaign.rollout_pct:
        return "not_in_rollout"
    if bucket(campaign.id, user_key, salt="holdout") < campaign.holdout_pct:
        return "control"
    return "treatment"


def rank(campaigns: Iterable[Campaign]) -> list[Campaign]:
    """Best first: priority desc, then offer value desc, then campaign id asc."""
    return sorted(campaigns, key=lambda c: (-c.priority, -c.offer.value, c.id))


# --- message -------------------------------------------------------------------------


def compile_message(source: str) -> BoundTemplate:
    """An offer message's template, parsed once (per campaign version, at load)."""
    return MESSAGE_ENV.from_string(source)


@functools.lru_cache(maxsize=512)
def _template(source: str) -> BoundTemplate:
    return compile_message(source)


def render(template: BoundTemplate, attributes: Mapping[str, Any], store: Mapping[str, Any]) -> str:
    """Render a compiled offer message with the user's attributes and ``store`` in scope.

    Undefined variables render as empty (use ``| default: "there"``). Templates are
    validated on import; should rendering still fail (e.g. ``divided_by: 0`` on a user
    value, or the output limit), the message is empty rather than the ping failing.
    """
    context = {**attributes, "store": dict(store)}
    try:
        return template.render(context)
    except LiquidError as exc:
        log.warning("offer message did not render: %s", exc.message)
        return ""


def render_message(
    template_source: str, attributes: Mapping[str, Any], store: Mapping[str, Any]
) -> str:
    """:func:`render` from the template's source."""
    return render(_template(template_source), attributes, store)


def furthest_of(reasons: list[Reason]) -> Reason:
    """The furthest of a campaign's reasons at the stores it was screened for; a campaign
    screened at no store was not targeted."""
    return furthest(reasons) if reasons else Reason.NOT_TARGETED
