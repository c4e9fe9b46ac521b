"""Response bodies of the geofence endpoints."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel


class FencePublic(BaseModel):
    store_id: str
    name: str
    kind: str
    lat: float
    lng: float
    radius_m: float | None
    geometry: dict[str, Any] | None
    tags: list[str]
    timezone: str
    address: str | None
    extra: dict[str, Any]
    created_at: datetime | None
    updated_at: datetime | None
    distance_m: float | None = None


class FenceList(BaseModel):
    items: list[FencePublic]
    next_cursor: str | None


class ImportOut(BaseModel):
    mode: str
    dry_run: bool
    created: int
    updated: int
    unchanged: int
    deleted: int
    skipped: int
    errors: list[dict[str, Any]]
    version: int
