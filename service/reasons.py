"""Every reason code a ping answer can carry: the one vocabulary of code, OpenAPI and tests."""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum


class Reason(StrEnum):
    """Reason codes, by DESIGN §4 step. Campaign-level codes are declared from the least to
    the furthest a campaign can get; a ping without an offer answers the furthest reached
    (:func:`furthest`), so that order is the only ranking of reasons.

    ======================  =====  =====================================================
    code                    step   meaning
    ======================  =====  =====================================================
    consent_denied          1      ``location_consent`` is false: no state kept
    low_accuracy            2      ping accuracy too coarse: no events
    stale_ping              2      ping older than ``offer_max_age_s``
    out_of_order            2      earlier than the device's last processed ping
    future_ping             2      timestamp in the future (answered 422, never a 200)
    no_trigger              3      no campaign's trigger fires on this ping's visits
    no_campaign             3      an enter or dwell, and no campaign at all
    state_unavailable       any    the device-state store is down: no events, no offer
    in_progress             any    a retry of a ping whose decision is still running
    not_targeted            4      the store matches neither ``store_ids`` nor ``tags``
    channel_mismatch        4      the ping asks for another channel
    campaign_paused         4      ``status: paused``
    not_started             4      before ``starts_at``
    ended                   4      at or after ``ends_at``
    outside_schedule        4      not on a scheduled day/hour, store local time
    quiet_hours             4      inside ``policies.quiet_hours``, store local time
    trigger_mismatch        4      enter vs dwell, or dwell shorter than ``dwell_s``
    audience_not_included   5      an ``include`` condition does not hold
    audience_excluded       5      an ``exclude`` condition holds
    exception_event         6      a listed event happened within its lookback
    not_in_rollout          9      user outside ``rollout_pct``
    capped                  7      a frequency cap or the minimum gap is reached
    budget_exhausted        8      campaign total or per-day budget used up
    lower_priority          10     another campaign ranked higher on this ping
    holdout                 9      user in the control arm: exposed, no offer
    unavailable             any    database or cap store unreachable: fail closed
    offer_issued            11     the offer was issued
    ======================  =====  =====================================================
    """

    # Ping-level codes.
    CONSENT_DENIED = "consent_denied"
    LOW_ACCURACY = "low_accuracy"
    STALE_PING = "stale_ping"
    OUT_OF_ORDER = "out_of_order"
    FUTURE_PING = "future_ping"
    NO_TRIGGER = "no_trigger"
    NO_CAMPAIGN = "no_campaign"
    STATE_UNAVAILABLE = "state_unavailable"
    IN_PROGRESS = "in_progress"
    # Campaign-level codes, least to furthest.
    NOT_TARGETED = "not_targeted"
    CHANNEL_MISMATCH = "channel_mismatch"
    CAMPAIGN_PAUSED = "campaign_paused"
    NOT_STARTED = "not_started"
    ENDED = "ended"
    OUTSIDE_SCHEDULE = "outside_schedule"
    QUIET_HOURS = "quiet_hours"
    TRIGGER_MISMATCH = "trigger_mismatch"
    AUDIENCE_NOT_INCLUDED = "audience_not_included"
    AUDIENCE_EXCLUDED = "audience_excluded"
    EXCEPTION_EVENT = "exception_event"
    NOT_IN_ROLLOUT = "not_in_rollout"
    CAPPED = "capped"
    BUDGET_EXHAUSTED = "budget_exhausted"
    LOWER_PRIORITY = "lower_priority"
    HOLDOUT = "holdout"
    UNAVAILABLE = "unavailable"
    OFFER_ISSUED = "offer_issued"


_ALL = list(Reason)
#: Campaign-level codes in rank order (the declaration order above).
CAMPAIGN_REASONS: tuple[Reason, ...] = tuple(_ALL[_ALL.index(Reason.NOT_TARGETED) :])
_RANK = {r: i for i, r in enumerate(CAMPAIGN_REASONS)}
#: The codes a 200 answer may carry (``future_ping`` is a 422).
ANSWER_REASONS: tuple[Reason, ...] = tuple(r for r in _ALL if r is not Reason.FUTURE_PING)


def furthest(reasons: Iterable[Reason]) -> Reason:
    """The reason of the campaign that got furthest.

    >>> furthest([Reason.CAMPAIGN_PAUSED, Reason.NOT_TARGETED, Reason.CAPPED])
    <Reason.CAPPED: 'capped'>
    """
    return max(reasons, key=_RANK.__getitem__)
