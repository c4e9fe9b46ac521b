"""The event log: record events inside the caller's transaction, and the SQL the relays use.

Record an event in the same transaction as the change it describes, so both are committed
or neither is::

    with engine.begin() as conn:
        repo.insert_redemption(conn, row)
        record(conn, [offer_redeemed(...)])

An async psycopg batch records the same rows with one statement::

    sql, params = insert_sql(events)
    await cur.execute(sql, params)

Either way a second recording of an event (same id) changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import Connection, Table, delete, exists, select, text, update
from sqlalchemy.dialects import postgresql, sqlite

from service.db.models import ErasureRow, EventRow, Geofence, WebhookDeliveryRow
from service.events.types import Event, EventType, user_erased
from service.timeutil import aware
from service.users.repository import user_hash, without_consent

EVENTS: Table = EventRow.__table__  # type: ignore[assignment]
DELIVERIES: Table = WebhookDeliveryRow.__table__  # type: ignore[assignment]
GEOFENCES: Table = Geofence.__table__  # type: ignore[assignment]
ERASURES: Table = ErasureRow.__table__  # type: ignore[assignment]

#: Columns an insert writes (in the order of :func:`insert_sql`'s placeholders), with their
#: PostgreSQL types: a JSON batch of rows is read with ``jsonb_to_recordset`` as this record.
COLUMN_TYPES = (
    ("id", "text"), ("type", "text"), ("occurred_at", "timestamptz"),
    ("recorded_at", "timestamptz"), ("data", "jsonb"), ("store_id", "text"),
    ("store_tags", "jsonb"), ("user_id", "text"), ("partition_key", "text"),
)  # fmt: skip
COLUMNS = tuple(name for name, _ in COLUMN_TYPES)


def event_rows(
    events: Iterable[Event], recorded_at: datetime | None = None
) -> list[dict[str, Any]]:
    """The ``events`` rows of ``events`` (one per id; a repeated id is kept once)."""
    at = recorded_at or datetime.now(UTC)
    rows: dict[str, dict[str, Any]] = {}
    for e in events:
        if e.id in rows:
            continue
        user = e.data.get("user_id")
        rows[e.id] = {
            "id": e.id,
            "type": e.type.value,
            "occurred_at": e.occurred_at,
            "recorded_at": at,
            "data": e.data,
            "store_id": e.store_id,
            "store_tags": list(e.store_tags),
            "user_id": str(user) if user is not None else None,
            "partition_key": e.partition_key,
        }
    return list(rows.values())


def _insert(conn: Connection) -> Any:
    return postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert


def record(conn: Connection, events: Sequence[Event]) -> None:
    """Add ``events`` to the log in ``conn``'s transaction; ids already there are skipped."""
    rows = event_rows(events)
    if rows:
        stmt = _insert(conn)(EVENTS).values(rows).on_conflict_do_nothing(index_elements=["id"])
        conn.execute(stmt)


def insert_sql(
    events: Sequence[Event], recorded_at: datetime | None = None
) -> tuple[str, list[Any]]:
    """One multi-row ``INSERT … ON CONFLICT (id) DO NOTHING`` for psycopg 3 (``%s``
    placeholders, JSON passed as text and cast), for a caller batching on its own
    connection (PostgreSQL only). ``("", [])`` when there is nothing to record."""
    rows = event_rows(events, recorded_at)
    if not rows:
        return "", []
    one = "(%s, %s, %s, %s, %s::jsonb, %s, %s::jsonb, %s, %s)"
    sql = (
        f"INSERT INTO events ({', '.join(COLUMNS)}) VALUES "
        + ", ".join([one] * len(rows))
        + " ON CONFLICT (id) DO NOTHING"
    )
    params: list[Any] = []
    for r in rows:
        for col in COLUMNS:
            value = r[col]
            if col in ("data", "store_tags"):
                value = orjson.dumps(value).decode()
            params.append(value)
    return sql, params


def store_tags(conn: Connection, store_id: str) -> list[str]:
    """The store's tags now (none when the store is gone)."""
    tags = conn.execute(select(GEOFENCES.c.tags).where(GEOFENCES.c.store_id == store_id)).scalar()
    return [str(t) for t in tags or ()]


#: Personal fields removed from a user's events when the user is erased.
PERSONAL_FIELDS = ("user_id", "device_id", "ping_id")


def redact_user(conn: Connection, user_id: str, device_ids: Iterable[str] = ()) -> int:
    """Remove ``user_id`` and its devices from the log's events (in the erasure's
    transaction), except ``user.erased`` itself, which must name the user. Returns the
    number of events changed. Deliveries still pending then send the redacted data."""
    keys = {user_id, *device_ids}
    rows = conn.execute(
        select(EVENTS.c.seq, EVENTS.c.data).where(
            (EVENTS.c.user_id == user_id) | EVENTS.c.partition_key.in_(keys),
            EVENTS.c.type != EventType.user_erased.value,
        )
    ).all()
    for seq, data in rows:
        clean = {k: (None if k in PERSONAL_FIELDS else v) for k, v in dict(data).items()}
        conn.execute(
            update(EVENTS)
            .where(EVENTS.c.seq == seq)
            .values(data=clean, user_id=None, partition_key="")
        )
    return len(rows)


def record_arrived(conn: Connection, events: Sequence[Event]) -> int:
    """Record events that waited outside the database (the visit events of an inbox),
    checked against what happened to their users meanwhile, as if they had been in the log
    already: one whose user has been erased since is recorded redacted (as
    :func:`redact_user` leaves the others); one whose user has withdrawn location consent is
    not recorded (nor exported) at all. Returns the number of events left out."""
    kept = admit_arrived(conn, events)
    record(conn, kept)
    return len(events) - len(kept)


def admit_arrived(conn: Connection, events: Sequence[Event]) -> list[Event]:
    """The checks of :func:`record_arrived`: ``events`` as they may be recorded (or
    exported) now, those of erased users redacted, those of users without consent left out.
    An event that needs no change is returned as the same object."""
    users = {str(e.data["user_id"]) for e in events if e.data.get("user_id") is not None}
    if not users:
        return list(events)
    denied = without_consent(conn, users)
    kept = [e for e in events if e.data.get("user_id") not in denied] if denied else list(events)
    hashes = {user_hash(u): u for u in users}
    found = conn.execute(
        select(ERASURES.c.user_hash, ERASURES.c.requested_at).where(
            ERASURES.c.user_hash.in_(list(hashes))
        )
    ).all()
    erased = {hashes[h]: aware(at) for h, at in found}
    if erased:
        kept = [_redacted(e) if _erased_after(e, erased) else e for e in kept]
    return kept


def record_new(
    conn: Connection, events: Sequence[Event], *, streamed: bool = False, fanned_out: bool = False
) -> dict[str, int]:
    """Like :func:`record`, the rows marked relayed to the streams (``streamed``) or to the
    webhooks (``fanned_out``) already. Returns the ``seq`` of each id inserted now (not in
    the log before). On PostgreSQL the batch is one JSON parameter of a fixed statement."""
    rows = event_rows(events)
    if not rows:
        return {}
    if conn.dialect.name == "postgresql":
        params = {"rows": orjson.dumps(rows).decode(), "streamed": streamed, "fanned": fanned_out}
        inserted = conn.execute(_INSERT_JSON, params)
    else:
        for r in rows:
            r["streamed"], r["fanned_out"] = streamed, fanned_out
        stmt = _insert(conn)(EVENTS).on_conflict_do_nothing(index_elements=["id"])
        inserted = conn.execute(stmt.returning(EVENTS.c.id, EVENTS.c.seq), rows)
    return {event_id: seq for event_id, seq in inserted}


# One statement text whatever the batch size: the driver and SQLAlchemy parse it once.
_INSERT_JSON = text(f"""
    INSERT INTO events ({", ".join(COLUMNS)}, streamed, fanned_out)
    SELECT {", ".join(COLUMNS)}, :streamed, :fanned
    FROM jsonb_to_recordset(CAST(:rows AS jsonb))
        AS r({", ".join(f"{name} {kind}" for name, kind in COLUMN_TYPES)})
    ON CONFLICT (id) DO NOTHING
    RETURNING id, seq
""")


def _erased_after(event: Event, erased: dict[str, datetime]) -> bool:
    at = erased.get(str(event.data.get("user_id")))
    return at is not None and event.occurred_at <= at


def _redacted(event: Event) -> Event:
    data = {k: (None if k in PERSONAL_FIELDS else v) for k, v in event.data.items()}
    return Event(event.id, event.type, event.occurred_at, data, event.store_tags)


def record_user_erased(
    conn: Connection, *, user_id: str, erasure_id: str, device_ids: Iterable[str], at: datetime
) -> Event:
    """The erasure's part of the log, in its transaction: the user's events redacted and
    ``user.erased`` recorded (once per ``erasure_id``)."""
    redact_user(conn, user_id, device_ids)
    event = user_erased(user_id=user_id, erasure_id=erasure_id, occurred_at=at)
    record(conn, [event])
    return event


def prune(conn: Connection, before: datetime, *, streams: bool, limit: int = 5000) -> int:
    """Delete up to ``limit`` events recorded before ``before`` that are fully handled —
    fanned out, relayed to the streams when ``streams``, no delivery of them pending —
    and the finished deliveries of such old events. Returns the events deleted."""
    # Through the events' recording time (indexed): finished deliveries of old events.
    done = conn.execute(
        select(DELIVERIES.c.id)
        .select_from(DELIVERIES.join(EVENTS, EVENTS.c.seq == DELIVERIES.c.event_seq))
        .where(EVENTS.c.recorded_at < before, DELIVERIES.c.status != "pending")
        .limit(limit)
    ).scalars()
    ids = list(done)
    if ids:
        conn.execute(delete(DELIVERIES).where(DELIVERIES.c.id.in_(ids)))
    conds = [EVENTS.c.recorded_at < before, EVENTS.c.fanned_out]
    if streams:
        conds.append(EVENTS.c.streamed)
    pending = exists().where(
        DELIVERIES.c.event_seq == EVENTS.c.seq, DELIVERIES.c.status == "pending"
    )
    seqs = list(conn.execute(select(EVENTS.c.seq).where(*conds, ~pending).limit(limit)).scalars())
    if seqs:
        conn.execute(delete(EVENTS).where(EVENTS.c.seq.in_(seqs)))
    return len(seqs)


def row_event(row: Any) -> Event:
    """An :class:`Event` back from an ``events`` row."""
    return Event(
        id=row.id,
        type=EventType(row.type),
        occurred_at=aware(row.occurred_at),
        data=dict(row.data),
        store_tags=tuple(row.store_tags or ()),
    )
