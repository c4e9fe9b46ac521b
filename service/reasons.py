"""Every reason code a ping answer can carry: the one vocabulary of code, OpenAPI and tests."""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum


class Reason(StrEnum):
    """Reason codes. Campaign-level codes are declared from the least to the furthest a
    campaign can get; a ping without an offer answers the furthest reached
    (:func:`furthest`), so that order is the only ranking of reasons. Each code's DESIGN §4
    step and meaning: :data:`EXPLAINED`."""

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
    # Trust (DESIGN §11, a step-2 check) is judged only for campaigns that passed step 4,
    # before any step that reads facts or counts caps: it ranks just above step 4's codes.
    SUSPECTED_SPOOFING = "suspected_spoofing"
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


#: Each code's DESIGN §4 step (number and name) and what it means, in words a marketer reads
#: (``?explain=true`` answers carry the codes; the console and the README show these).
EXPLAINED: dict[Reason, tuple[int, str, str]] = {
    Reason.CONSENT_DENIED: (1, "consent", "the user withdrew location consent: no state kept"),
    Reason.LOW_ACCURACY: (2, "ping", "the location was too imprecise to make events"),
    Reason.STALE_PING: (2, "ping", "the ping is older than offer_max_age_s"),
    Reason.OUT_OF_ORDER: (2, "ping", "earlier than the device's last processed ping"),
    Reason.FUTURE_PING: (2, "ping", "the ping's time is ahead of the server clock (a 422)"),
    Reason.STATE_UNAVAILABLE: (2, "ping", "device state is unavailable: no events, no offer"),
    Reason.IN_PROGRESS: (2, "ping", "a retry of a ping whose decision is still running"),
    Reason.SUSPECTED_SPOOFING: (
        2,
        "ping",
        "a mocked location, an impossible jump, or a shared account or device",
    ),
    Reason.NO_TRIGGER: (3, "fences", "no campaign's trigger fires on this ping's visits"),
    Reason.NO_CAMPAIGN: (3, "fences", "a store was entered but no campaign exists"),
    Reason.NOT_TARGETED: (4, "campaign", "the campaign does not target this store"),
    Reason.CHANNEL_MISMATCH: (4, "campaign", "the ping asks for another channel"),
    Reason.CAMPAIGN_PAUSED: (4, "campaign", "the campaign is paused"),
    Reason.NOT_STARTED: (4, "campaign", "the campaign has not started yet"),
    Reason.ENDED: (4, "campaign", "the campaign has ended"),
    Reason.OUTSIDE_SCHEDULE: (4, "campaign", "outside the campaign's days or hours (store time)"),
    Reason.QUIET_HOURS: (4, "campaign", "inside quiet hours (store time)"),
    Reason.TRIGGER_MISMATCH: (4, "campaign", "enter vs dwell, or not inside for dwell_s yet"),
    Reason.AUDIENCE_NOT_INCLUDED: (5, "audience", "an include condition does not hold"),
    Reason.AUDIENCE_EXCLUDED: (5, "audience", "an exclude condition holds"),
    Reason.EXCEPTION_EVENT: (6, "exception events", "a listed event (e.g. a purchase) happened"),
    Reason.CAPPED: (7, "frequency caps", "a frequency cap or the minimum gap was reached"),
    Reason.BUDGET_EXHAUSTED: (8, "budget", "the campaign's total or daily budget is spent"),
    Reason.NOT_IN_ROLLOUT: (9, "rollout", "the user is outside the campaign's rollout slice"),
    Reason.HOLDOUT: (9, "holdout", "the user is in the control group: exposed, no offer"),
    Reason.LOWER_PRIORITY: (10, "rank", "another campaign ranked higher on this ping"),
    Reason.UNAVAILABLE: (11, "issue", "the database or cap store is down: no offer"),
    Reason.OFFER_ISSUED: (11, "issue", "the offer was issued"),
}


def furthest(reasons: Iterable[Reason]) -> Reason:
    """The reason of the campaign that got furthest.

    >>> furthest([Reason.CAMPAIGN_PAUSED, Reason.NOT_TARGETED, Reason.CAPPED])
    <Reason.CAPPED: 'capped'>
    """
    return max(reasons, key=_RANK.__getitem__)
