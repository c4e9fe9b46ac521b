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
from service.reasons import EXPLAINED, Reason


def explain_reason(reason: str) -> tuple[int, str, str]:
    """(DESIGN §4 step, step name, plain words) of a reason code."""
    try:
        return EXPLAINED[Reason(reason)]
    except ValueError:
        return (99, "", reason.replace("_", " "))


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
