"""Small geometry helpers for tests."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

from geofences import EARTH_RADIUS_M


def offset(lat: float, lng: float, bearing_deg: float, dist_m: float) -> tuple[float, float]:
    """The point ``dist_m`` metres from (lat, lng) along ``bearing_deg``, on PostGIS's sphere."""
    p1, l1, b = math.radians(lat), math.radians(lng), math.radians(bearing_deg)
    d = dist_m / EARTH_RADIUS_M
    p2 = math.asin(math.sin(p1) * math.cos(d) + math.cos(p1) * math.sin(d) * math.cos(b))
    l2 = l1 + math.atan2(
        math.sin(b) * math.sin(d) * math.cos(p1), math.cos(d) - math.sin(p1) * math.sin(p2)
    )
    return math.degrees(p2), (math.degrees(l2) + 540.0) % 360.0 - 180.0


def iso(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat().replace("+00:00", "Z")


def ago(seconds: float) -> datetime:
    return datetime.now(UTC) - timedelta(seconds=seconds)


def device_key(settings: Any, device_id: str) -> str:
    """The common start of a device's Redis keys (``<prefix>:{ev:<n>}:d:<device>``)."""
    from service.events.streams import StreamLayout
    from service.state.redis_store import device_prefix

    return device_prefix(StreamLayout(settings.redis_prefix, settings.stream_partitions), device_id)


def partition(settings: Any, device_id: str) -> int:
    """The event partition of a device (its keys carry the partition's hash tag)."""
    from service.events.streams import StreamLayout

    return StreamLayout(settings.redis_prefix, settings.stream_partitions).partition(device_id)
