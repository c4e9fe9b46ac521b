"""User attributes and events (erasure: :mod:`service.users.erasure`)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import Engine

from service.errors import InvalidInput
from service.users import repository as repo
from service.users.schemas import UserEventIn


def patch_attributes(
    engine: Engine,
    user_id: str,
    patch: dict[str, Any],
    before_commit: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Merge ``patch``; ``before_commit`` runs inside the transaction, so that when it
    raises (a consent change Redis could not take) nothing is written."""
    with engine.begin() as conn:
        attrs = repo.merge_attributes(conn, user_id, patch)
        if before_commit is not None:
            before_commit()
    return attrs


def record_event(
    engine: Engine, user_id: str, event: UserEventIn, future_tolerance_s: float
) -> dict[str, Any]:
    ahead = event.occurred_at.timestamp() - time.time()
    if ahead > future_tolerance_s:
        raise InvalidInput(
            f"occurred_at is {ahead:.0f} s in the future",
            [{"field": "occurred_at", "reason": "in the future"}],
        )
    event_id = event.event_id or uuid.uuid4().hex
    row = {
        "id": event_id,
        "user_id": user_id,
        "type": event.type,
        "occurred_at": event.occurred_at,
        "store_id": event.store_id,
        "properties": event.properties,
    }
    with engine.begin() as conn:
        fresh = repo.add_event(conn, row)
    return {
        "event_id": event_id,
        "user_id": user_id,
        "type": event.type,
        "occurred_at": event.occurred_at,
        "store_id": event.store_id,
        "properties": event.properties,
        "duplicate": not fresh,
    }


def load_facts_inputs(
    engine: Engine, user_key: str, since: datetime
) -> tuple[dict[str, Any], list[tuple[str, datetime]]]:
    """Attributes and the events the rules need, in one connection."""
    with engine.connect() as conn:
        attrs = repo.get_attributes(conn, user_key) or {}
        events = repo.recent_events(conn, user_key, since)
    return attrs, events
