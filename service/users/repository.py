"""SQL for user attributes and events."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import (
    Connection,
    Engine,
    Table,
    delete,
    func,
    literal,
    select,
    type_coerce,
    union_all,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from service.db.models import ExposureRow, OfferRow, UserEventRow, UserRow

USERS: Table = UserRow.__table__  # type: ignore[assignment]
EVENTS: Table = UserEventRow.__table__  # type: ignore[assignment]


def merge_attributes(conn: Connection, user_id: str, patch: dict[str, Any]) -> dict[str, Any]:
    """Merge ``patch`` into the user's attributes in one statement (null removes a key).

    Done in SQL, not read-modify-write, so two backends patching different attributes of
    one user at the same moment both win.
    """
    keep = {k: v for k, v in patch.items() if v is not None}
    drop = [k for k, v in patch.items() if v is None]
    stmt: Any
    if conn.dialect.name == "postgresql":
        stmt = postgresql.insert(USERS).values(user_id=user_id, attributes=keep)
        merged = USERS.c.attributes.op("||")(stmt.excluded.attributes)
        if drop:
            merged = merged.op("-")(postgresql.array(drop))
        stmt = stmt.on_conflict_do_update(
            index_elements=[USERS.c.user_id],
            set_={"attributes": merged, "updated_at": func.now()},
        )
    else:
        # json_patch is RFC 7386 merge patch: null removes the key.
        stmt = sqlite.insert(USERS).values(user_id=user_id, attributes=keep)
        stmt = stmt.on_conflict_do_update(
            index_elements=[USERS.c.user_id],
            set_={
                "attributes": func.json_patch(
                    USERS.c.attributes, literal(orjson.dumps(patch).decode())
                ),
                "updated_at": func.now(),
            },
        )
    conn.execute(stmt)
    return get_attributes(conn, user_id) or {}


def get_attributes(conn: Connection, user_id: str) -> dict[str, Any] | None:
    row = conn.execute(select(USERS.c.attributes).where(USERS.c.user_id == user_id)).first()
    if row is None:
        return None
    attrs = row[0]
    if isinstance(attrs, str):  # SQLite after json_patch returns text
        attrs = orjson.loads(attrs)
    return dict(attrs)


def add_event(conn: Connection, event: dict[str, Any]) -> bool:
    """Insert an event; False when an event with this id was recorded already."""
    dialect_insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    stmt = (
        dialect_insert(EVENTS)
        .values(**event)
        .on_conflict_do_nothing(index_elements=["id"])
        .returning(EVENTS.c.id)
    )
    return conn.execute(stmt).first() is not None  # rowcount is unreliable here


def recent_events(conn: Connection, user_id: str, since: datetime) -> list[tuple[str, datetime]]:
    """Events since ``since``, the latest of each type before it (for "days since"), and the
    first signup: one statement, as it runs on every offer decision."""
    mine = EVENTS.c.user_id == user_id
    recent = select(EVENTS.c.type, EVENTS.c.occurred_at).where(mine, EVENTS.c.occurred_at >= since)
    latest = (
        select(EVENTS.c.type, func.max(EVENTS.c.occurred_at))
        .where(mine, EVENTS.c.occurred_at < since)
        .group_by(EVENTS.c.type)
    )
    signup = select(literal("signup"), func.min(EVENTS.c.occurred_at)).where(
        mine, EVENTS.c.type == "signup"
    )
    rows = conn.execute(union_all(recent, latest, signup)).all()
    return [(t, at) for t, at in rows if at is not None]


# The facts of several users in one statement (PostgreSQL, through psycopg's async API,
# prepared): each user's attributes row, events since the lookback, the latest of each type
# before it (for "days since") and the first signup, as (user, kind, type, at, attributes).
FACTS_SQL = """
SELECT user_id, 'a', NULL, NULL::timestamptz, attributes FROM users
 WHERE user_id = ANY(%(u)s)
UNION ALL
SELECT user_id, 'e', type, occurred_at, NULL FROM user_events
 WHERE user_id = ANY(%(u)s) AND occurred_at >= %(since)s
UNION ALL
(SELECT user_id, 'e', type, max(occurred_at), NULL FROM user_events
  WHERE user_id = ANY(%(u)s) AND occurred_at < %(since)s GROUP BY user_id, type)
UNION ALL
(SELECT user_id, 'e', 'signup', min(occurred_at), NULL FROM user_events
  WHERE user_id = ANY(%(u)s) AND type = 'signup' GROUP BY user_id)
"""

Facts = tuple[dict[str, Any], list[tuple[str, datetime]]]


def facts_from_rows(
    user_ids: list[str], rows: list[tuple[str, str, str | None, datetime | None, Any]]
) -> list[Facts]:
    """Each user's attributes and events from the rows of :data:`FACTS_SQL`."""
    out: dict[str, Facts] = {u: ({}, []) for u in user_ids}
    for user_id, kind, event_type, at, attributes in rows:
        attrs, events = out[user_id]
        if kind == "a":
            raw = orjson.loads(attributes) if isinstance(attributes, str) else attributes
            attrs.update(raw)
        elif event_type is not None and at is not None:
            events.append((event_type, at))
    return [out[u] for u in user_ids]


def erase(conn: Connection, user_id: str, pseudonym: str) -> dict[str, int]:
    """Erase a user's personal data; keep anonymous aggregates (offers, exposures)."""
    offers: Table = OfferRow.__table__  # type: ignore[assignment]
    exposures: Table = ExposureRow.__table__  # type: ignore[assignment]
    counts = {
        "attributes": conn.execute(delete(USERS).where(USERS.c.user_id == user_id)).rowcount,
        "events": conn.execute(delete(EVENTS).where(EVENTS.c.user_id == user_id)).rowcount,
        "offers_anonymized": conn.execute(
            update(offers)
            .where(offers.c.user_key == user_id)
            .values(user_key=pseudonym, device_id=None, message=None)
        ).rowcount,
        "exposures_anonymized": conn.execute(
            update(exposures).where(exposures.c.user_key == user_id).values(user_key=pseudonym)
        ).rowcount,
    }
    return counts


def devices_of(conn: Connection, user_id: str) -> list[str]:
    offers: Table = OfferRow.__table__  # type: ignore[assignment]
    rows = conn.execute(
        select(offers.c.device_id).where(offers.c.user_key == user_id).distinct()
    ).all()
    return [r[0] for r in rows if r[0]]


def users_without_consent(engine: Engine) -> list[str]:
    """Users whose ``location_consent`` is false (to refill the ping path's fast copy)."""
    if engine.dialect.name == "postgresql":
        cond = (
            type_coerce(USERS.c.attributes, postgresql.JSONB)["location_consent"].astext == "false"
        )
    else:
        cond = func.json_extract(USERS.c.attributes, "$.location_consent") == 0
    with engine.connect() as conn:
        return [r[0] for r in conn.execute(select(USERS.c.user_id).where(cond))]
