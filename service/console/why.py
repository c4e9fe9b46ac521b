""" "Why no offer?": one real ping through the service's ping pipeline, with ``explain``.

:func:`explain_ping` is the console's only call into the ping pipeline (re-point it here
when that pipeline's entry point changes). It processes a real ping for the chosen device:
the device's visit state moves, and an offer it earns is issued and counted like any other.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any, Literal

import orjson

from service.locations.schemas import PingIn
from service.locations.service import check_not_future, process_ping

# Each reason code's step of DESIGN §4 and what it means, for the "why" table.
REASONS: dict[str, tuple[int, str, str]] = {
    "consent_denied": (1, "consent", "the user withdrew location consent"),
    "low_accuracy": (2, "ping", "the location was too imprecise"),
    "stale_ping": (2, "ping", "the ping was too old to act on"),
    "out_of_order": (2, "ping", "an earlier ping than the device's last one"),
    "future_ping": (2, "ping", "the ping's time is ahead of the server clock"),
    "suspected_spoofing": (2, "ping", "the location looks mocked or impossible"),
    "state_unavailable": (2, "ping", "device state is unavailable right now"),
    "no_trigger": (3, "fences", "no store was entered here (or dwell not reached)"),
    "no_campaign": (3, "fences", "a store was entered but no campaign exists"),
    "channel_mismatch": (4, "campaign", "the campaign uses another channel"),
    "not_targeted": (4, "campaign", "the campaign does not target this store"),
    "campaign_paused": (4, "campaign", "the campaign is paused"),
    "not_started": (4, "campaign", "the campaign has not started yet"),
    "ended": (4, "campaign", "the campaign has ended"),
    "outside_schedule": (4, "campaign", "outside the campaign's days or hours (store time)"),
    "quiet_hours": (4, "campaign", "inside quiet hours (store time)"),
    "trigger_mismatch": (4, "campaign", "the trigger (enter or dwell time) did not match"),
    "audience_not_included": (5, "audience", "the user is not in the audience"),
    "audience_excluded": (5, "audience", "the user is excluded from the audience"),
    "exception_event": (6, "exception events", "a recent event (e.g. a purchase) cancels it"),
    "not_in_rollout": (9, "rollout", "the user is outside the campaign's rollout slice"),
    "capped": (7, "frequency caps", "a frequency cap or the minimum gap was reached"),
    "budget_exhausted": (8, "budget", "the campaign's budget is spent"),
    "holdout": (9, "holdout", "the user is in the control group: exposed, no offer"),
    "lower_priority": (10, "rank", "another campaign ranked higher"),
    "offer_issued": (11, "issue", "an offer was issued"),
    "unavailable": (11, "issue", "the database or cap store is down: no offer (fail closed)"),
    "in_progress": (11, "issue", "a retry of this ping is still being decided"),
}


def explain_reason(reason: str) -> tuple[int, str, str]:
    """(DESIGN §4 step, step name, plain words) of a reason code."""
    return REASONS.get(reason, (99, "", reason.replace("_", " ")))


def in_design_order(decisions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Campaign decisions ordered by the §4 step at which each stopped (stable)."""
    return sorted(decisions, key=lambda d: explain_reason(str(d.get("reason")))[0])


async def explain_ping(
    app_state: Any,
    *,
    device_id: str,
    user_id: str | None,
    lat: float,
    lng: float,
    accuracy_m: float = 5.0,
    channel: Literal["push", "in_app"] | None = None,
) -> dict[str, Any]:
    """Process a ping at (lat, lng) now for ``device_id`` and return the explained answer."""
    ping = PingIn(
        device_id=device_id,
        user_id=user_id or None,
        lat=lat,
        lng=lng,
        accuracy_m=accuracy_m,
        timestamp=datetime.now(UTC),
        channel=channel,
    )
    ctx = app_state.ping_context
    check_not_future(ping, ctx.settings, time.time())
    answer: dict[str, Any] = orjson.loads(await process_ping(ctx, ping, explain=True))
    return answer
