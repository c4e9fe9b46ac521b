"""Request and response bodies of the ping endpoints."""

from __future__ import annotations

from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field


class PingIn(BaseModel):
    """One location ping. ``timestamp`` is RFC 3339 with an offset (``Z`` or ``+02:00``)."""

    # Strict: the documented types only (lax mode read false as 0.0, and 0 as 1970).
    model_config = ConfigDict(strict=True)

    device_id: str = Field(min_length=1, max_length=128)
    user_id: str | None = Field(default=None, min_length=1, max_length=128)
    lat: float = Field(ge=-90, le=90, allow_inf_nan=False)
    lng: float = Field(ge=-180, le=180, allow_inf_nan=False)
    accuracy_m: float = Field(ge=0, allow_inf_nan=False)
    timestamp: AwareDatetime
    ping_id: str | None = Field(default=None, min_length=1, max_length=128)
    speed_mps: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    channel: Literal["push", "in_app"] | None = None


class PingBatchIn(BaseModel):
    model_config = ConfigDict(strict=True)

    pings: list[PingIn] = Field(min_length=1, max_length=100)


class EventOut(BaseModel):
    type: Literal["enter", "dwell", "exit"]
    store_id: str
    distance_m: float | None = None
    dwell_s: float | None = None


class PingOut(BaseModel):
    ping_id: str
    events: list[EventOut]
    offer: dict[str, object] | None
    reason: str


class PingBatchOut(BaseModel):
    results: list[PingOut]
