"""Deciding what one ping means: checks of DESIGN §4 step 2, then visit events.

Reason codes, in the order they are decided:

- ``out_of_order``: earlier than the device's last processed ping; nothing changes.
- ``low_accuracy``: ``accuracy_m`` above ``max_accuracy_m``; no events (the ping still
  counts as the device's last processed one).
- events are computed (enter / dwell / exit);
- ``stale_ping``: older than ``offer_max_age_s`` — its events are kept (an offline batch
  still records the visit) but it may never bring an offer;
- ``no_trigger``: no enter or dwell event;
- ``no_campaign``: an enter or dwell happened but no campaign can fire yet (offer
  decisioning is not built in this version, so ``offer`` is always null).
- ``state_unavailable``: the device-state backend is down; no events, no offer, still 200.

A future ping (more than ``future_tolerance_s`` ahead of the server clock) is a 422.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

import orjson

from geofences.visits import DeviceState, step
from service.errors import FuturePing
from service.fences.service import IndexHolder
from service.locations.schemas import PingIn
from service.settings import Settings
from service.state import StateStore, StateUnavailable

log = logging.getLogger("geo_offers.locations")

_PING_NS = uuid.UUID("5b0c8d3e-3f4a-4b8e-9a51-6c1f0f2f6a10")


@dataclass(frozen=True, slots=True)
class PingContext:
    settings: Settings
    holder: IndexHolder
    store: StateStore


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


def _answer(pid: str, events: list[dict[str, Any]], reason: str) -> bytes:
    return orjson.dumps({"ping_id": pid, "events": events, "offer": None, "reason": reason})


async def process_ping(ctx: PingContext, ping: PingIn, now: float | None = None) -> bytes:
    """Process one (already validated, not future) ping; returns the JSON answer."""
    settings = ctx.settings
    now = time.time() if now is None else now
    pid = ping_key(ping)
    ts = ping.timestamp.timestamp()
    index = ctx.holder.index
    assert index is not None, "pings are only routed once the index is loaded"

    def decide(doc: dict[str, Any] | None) -> tuple[dict[str, Any] | None, bytes]:
        state = DeviceState.from_doc(doc) if doc is not None else None
        if state is not None and ts < state.last_ts:
            return None, _answer(pid, [], "out_of_order")
        if ping.accuracy_m > settings.max_accuracy_m:
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
        )
        if now - ts > settings.offer_max_age_s:
            reason = "stale_ping"
        elif any(e.type in ("enter", "dwell") for e in events):
            reason = "no_campaign"
        else:
            reason = "no_trigger"
        return new_state.to_doc(), _answer(pid, [e.to_dict() for e in events], reason)

    try:
        return await ctx.store.process(ping.device_id, pid, decide)
    except StateUnavailable as exc:
        log.warning(
            "device state unavailable", extra={"event": "state_unavailable", "error": str(exc)}
        )
        return _answer(pid, [], "state_unavailable")
