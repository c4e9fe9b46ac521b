"""SQL for user attributes and events."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable
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
    or_,
    select,
    type_coerce,
    union_all,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from service.db.models import ErasureRow, ExposureRow, OfferRow, UserEventRow, UserRow
from service.timeutil import aware

USERS: Table = UserRow.__table__  # type: ignore[assignment]
EVENTS: Table = UserEventRow.__table__  # type: ignore[assignment]
ERASURES: Table = ErasureRow.__table__  # type: ignore[assignment]
_ERASURE_NS = uuid.UUID("2d6f0e8a-7c41-4b9e-b3a2-9e5d1c7f4a60")


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


def _no_consent(dialect: str) -> Any:
    if dialect == "postgresql":
        return (
            type_coerce(USERS.c.attributes, postgresql.JSONB)["location_consent"].astext == "false"
        )
    return func.json_extract(USERS.c.attributes, "$.location_consent") == 0


def users_without_consent(engine: Engine) -> list[str]:
    """Users whose ``location_consent`` is false (to refill the ping path's fast copy)."""
    with engine.connect() as conn:
        cond = _no_consent(engine.dialect.name)
        return [r[0] for r in conn.execute(select(USERS.c.user_id).where(cond))]


def without_consent(conn: Connection, user_ids: Iterable[str]) -> set[str]:
    """Those of ``user_ids`` whose ``location_consent`` is false."""
    cond = _no_consent(conn.dialect.name)
    query = select(USERS.c.user_id).where(USERS.c.user_id.in_(list(user_ids)), cond)
    return {r[0] for r in conn.execute(query)}


# --- erasures: the durable record of each erasure -----------------------------------


def user_hash(user_id: str) -> str:
    """The key of a user's erasure record (the raw id is not kept once it is done)."""
    return hashlib.sha256(user_id.encode()).hexdigest()


def _insert(conn: Connection) -> Any:
    return postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert


def record_erasure(
    conn: Connection, user_id: str, devices: list[str], now: datetime, lease_until: datetime
) -> dict[str, Any] | None:
    """Mark the user's erasure pending, leased to the caller until ``lease_until``, with
    ``devices`` added to those a pending erasure already lists. Returns the record as it
    was before (None if there was none), for :func:`restore_erasure`."""
    key = user_hash(user_id)
    fresh = conn.execute(
        _insert(conn)(ERASURES)
        .values(
            user_hash=key, user_id=user_id, devices=[], status="new", requested_at=now,
            attempts=0,
        )
        .on_conflict_do_nothing(index_elements=["user_hash"])
        .returning(ERASURES.c.user_hash)
    ).first() is not None  # fmt: skip
    row = conn.execute(select(ERASURES).where(ERASURES.c.user_hash == key).with_for_update()).one()
    before = None if fresh else dict(row._mapping)
    was_pending = bool(row.status == "pending")
    known = list(row.devices) if was_pending else []
    conn.execute(
        update(ERASURES)
        .where(ERASURES.c.user_hash == key)
        .values(
            user_id=user_id,
            devices=sorted({*known, *devices}),
            status="pending",
            # A retried or resumed erasure is the same request (its event id is made of it).
            requested_at=row.requested_at if was_pending else now,
            completed_at=None,
            attempts=(row.attempts if was_pending else 0) + 1,
            last_error=None,
            lease_until=lease_until,
        )
    )
    return before


def restore_erasure(conn: Connection, key: str, before: dict[str, Any] | None) -> None:
    """Put the record back as :func:`record_erasure` found it (nothing was held after all)."""
    if before is None:
        conn.execute(delete(ERASURES).where(ERASURES.c.user_hash == key))
    else:
        conn.execute(update(ERASURES).where(ERASURES.c.user_hash == key).values(**before))


def claim_erasure(
    conn: Connection, now: datetime, lease_until: datetime
) -> tuple[str, str, list[str]] | None:
    """Lease the oldest pending erasure nobody holds: ``(user_hash, user_id, devices)``.

    ``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so replicas claiming at once take different
    rows; the lease keeps others off it after this transaction, until it expires (a
    replica killed halfway leaves its erasure to the next one).
    """
    free = or_(ERASURES.c.lease_until.is_(None), ERASURES.c.lease_until < now)
    key = conn.execute(
        select(ERASURES.c.user_hash)
        .where(ERASURES.c.status == "pending", free)
        .order_by(ERASURES.c.requested_at)
        .limit(1)
        .with_for_update(skip_locked=True)
    ).scalar()
    if key is None:
        return None
    row = conn.execute(
        update(ERASURES)
        .where(ERASURES.c.user_hash == key)
        .values(lease_until=lease_until, attempts=ERASURES.c.attempts + 1)
        .returning(ERASURES.c.user_id, ERASURES.c.devices)
    ).one()
    return key, row.user_id, list(row.devices)


def release_erasure(conn: Connection, key: str, error: str) -> None:
    """Give a pending erasure back (a step failed): any replica may retry it now."""
    conn.execute(
        update(ERASURES)
        .where(ERASURES.c.user_hash == key, ERASURES.c.status == "pending")
        .values(lease_until=None, last_error=error[:500])
    )


def erasure_id(conn: Connection, key: str) -> str:
    """The id of the user's current erasure request (the same for its retries and resumes;
    a new one once an erasure is done and the user is erased again)."""
    requested = conn.execute(
        select(ERASURES.c.requested_at).where(ERASURES.c.user_hash == key)
    ).scalar_one()
    return str(uuid.uuid5(_ERASURE_NS, f"{key}|{aware(requested).timestamp():.6f}"))


def finish_erasure(conn: Connection, key: str, now: datetime) -> None:
    """Done: the raw user id and the devices are dropped; the record keeps the times."""
    conn.execute(
        update(ERASURES)
        .where(ERASURES.c.user_hash == key)
        .values(
            status="done", user_id=None, devices=[], completed_at=now, lease_until=None,
            last_error=None,
        )
    )  # fmt: skip


def erasure_of(conn: Connection, user_id: str) -> dict[str, Any] | None:
    row = conn.execute(
        select(
            ERASURES.c.status,
            ERASURES.c.requested_at,
            ERASURES.c.completed_at,
            ERASURES.c.attempts,
            ERASURES.c.last_error,
        ).where(ERASURES.c.user_hash == user_hash(user_id))
    ).first()
    return None if row is None else dict(row._mapping)


def pending_erasures(conn: Connection) -> int:
    return int(
        conn.execute(
            select(func.count()).select_from(ERASURES).where(ERASURES.c.status == "pending")
        ).scalar_one()
    )
