"""UTC helpers for values read back from either database backend."""

from __future__ import annotations

from datetime import UTC, datetime


def aware(value: datetime) -> datetime:
    """SQLite hands back naive datetimes (stored as UTC); PostgreSQL aware ones."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def aware_or_none(value: datetime | None) -> datetime | None:
    return None if value is None else aware(value)


def iso_z(value: datetime) -> str:
    """RFC 3339 in UTC with a ``Z``."""
    return aware(value).astimezone(UTC).isoformat().replace("+00:00", "Z")
