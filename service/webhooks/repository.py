"""SQL for webhook endpoints and deliveries, and the fan-out from the event log."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Table, delete, func, insert, select, update

from service.db.models import WebhookDeliveryRow, WebhookEndpointRow
from service.events.log import EVENTS
from service.events.types import Event
from service.timeutil import aware, iso_z

ENDPOINTS: Table = WebhookEndpointRow.__table__  # type: ignore[assignment]
DELIVERIES: Table = WebhookDeliveryRow.__table__  # type: ignore[assignment]


@dataclass(frozen=True, slots=True)
class Subscription:
    """What an endpoint receives: ``None`` means every event type / every store."""

    endpoint_id: str
    event_types: frozenset[str] | None
    store_tags: frozenset[str] | None

    def wants(self, event_type: str, store_id: str | None, tags: Iterable[str]) -> bool:
        """An event matches when its type is subscribed and, if the endpoint names store
        tags, its store has one of them. An event about no store (``user.erased``) goes
        to every endpoint subscribed to its type."""
        if self.event_types is not None and event_type not in self.event_types:
            return False
        if self.store_tags is None or store_id is None:
            return True
        return not self.store_tags.isdisjoint(tags)


def _subscription(row: Any) -> Subscription:
    return Subscription(
        row.id,
        None if row.event_types is None else frozenset(row.event_types),
        None if row.store_tags is None else frozenset(row.store_tags),
    )


# -- endpoints ---------------------------------------------------------------------------


def insert_endpoint(conn: Connection, row: dict[str, Any]) -> None:
    conn.execute(insert(ENDPOINTS).values(**row))


def get_endpoint(conn: Connection, endpoint_id: str, *, lock: bool = False) -> Any:
    stmt = select(ENDPOINTS).where(ENDPOINTS.c.id == endpoint_id)
    if lock:
        stmt = stmt.with_for_update()
    return conn.execute(stmt).first()


def list_endpoints(conn: Connection) -> list[Any]:
    return list(conn.execute(select(ENDPOINTS).order_by(ENDPOINTS.c.created_at, ENDPOINTS.c.id)))


def enabled_endpoints(conn: Connection) -> list[Any]:
    return list(conn.execute(select(ENDPOINTS).where(ENDPOINTS.c.enabled)))


def update_endpoint(conn: Connection, endpoint_id: str, values: dict[str, Any]) -> None:
    conn.execute(update(ENDPOINTS).where(ENDPOINTS.c.id == endpoint_id).values(**values))


def delete_endpoint(conn: Connection, endpoint_id: str) -> bool:
    conn.execute(delete(DELIVERIES).where(DELIVERIES.c.endpoint_id == endpoint_id))
    res = conn.execute(
        delete(ENDPOINTS).where(ENDPOINTS.c.id == endpoint_id).returning(ENDPOINTS.c.id)
    )
    return res.first() is not None


def backlog(conn: Connection, endpoint_id: str | None = None) -> dict[str, tuple[int, datetime]]:
    """Per endpoint with pending deliveries: their count and the oldest one's event time
    of recording."""
    stmt = (
        select(DELIVERIES.c.endpoint_id, func.count(), func.min(EVENTS.c.recorded_at))
        .select_from(DELIVERIES.join(EVENTS, EVENTS.c.seq == DELIVERIES.c.event_seq))
        .where(DELIVERIES.c.status == "pending")
        .group_by(DELIVERIES.c.endpoint_id)
    )
    if endpoint_id is not None:
        stmt = stmt.where(DELIVERIES.c.endpoint_id == endpoint_id)
    return {ep: (int(n), aware(oldest)) for ep, n, oldest in conn.execute(stmt)}


def last_attempted(conn: Connection, endpoint_id: str) -> Any:
    """The endpoint's newest delivery that has had an attempt (its status, the answer's
    code or error, when), or None. Walks ``ix_webhook_deliveries_list`` backwards."""
    d = DELIVERIES.c
    return conn.execute(
        select(d.event_id, d.status, d.attempts, d.last_attempt_at, d.last_status_code,
               d.last_error)
        .where(d.endpoint_id == endpoint_id, d.last_attempt_at.is_not(None))
        .order_by(d.id.desc())
        .limit(1)
    ).first()  # fmt: skip


def oldest_unhandled(conn: Connection, flag: str) -> datetime | None:
    """When the oldest event not yet ``fanned_out`` / ``streamed`` was recorded."""
    column = EVENTS.c[flag]
    at = conn.execute(select(func.min(EVENTS.c.recorded_at)).where(~column)).scalar()
    return aware(at) if at is not None else None


# -- fan-out and replay ------------------------------------------------------------------


def fan_out(conn: Connection, now: datetime, limit: int) -> tuple[list[str], dict[str, int]]:
    """Create the deliveries of up to ``limit`` events not fanned out yet, to every enabled
    endpoint they match, and mark the events fanned out — one transaction, so an event is
    fanned out once whichever replica gets it (rows locked with SKIP LOCKED on PostgreSQL;
    SQLite's write lock serialises). Returns the event types taken and the deliveries made
    per endpoint."""
    rows = conn.execute(
        select(EVENTS.c.seq, EVENTS.c.id, EVENTS.c.type, EVENTS.c.store_id, EVENTS.c.store_tags)
        .where(~EVENTS.c.fanned_out)
        .order_by(EVENTS.c.seq)
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).all()
    if not rows:
        return [], {}
    made = _deliver(conn, [(r.seq, r.id, r.type, r.store_id, r.store_tags) for r in rows], now)
    conn.execute(
        update(EVENTS).where(EVENTS.c.seq.in_([r.seq for r in rows])).values(fanned_out=True)
    )
    return [r.type for r in rows], made


def fan_out_recorded(
    conn: Connection, events: Iterable[tuple[int, Event]], now: datetime
) -> dict[str, int]:
    """The deliveries of events just recorded already ``fanned_out`` (``(seq, event)``
    pairs), as :func:`fan_out` makes them. Returns the deliveries made per endpoint."""
    rows = [(seq, e.id, e.type.value, e.store_id, e.store_tags) for seq, e in events]
    return _deliver(conn, rows, now) if rows else {}


def _deliver(
    conn: Connection, events: list[tuple[int, str, str, str | None, Any]], now: datetime
) -> dict[str, int]:
    """Insert the deliveries of ``(seq, id, type, store_id, store_tags)`` events to every
    enabled endpoint they match; the number made per endpoint."""
    subs = [_subscription(r) for r in enabled_endpoints(conn)]
    made: dict[str, int] = {}
    deliveries = []
    for seq, event_id, type_, store_id, tags in events:
        for s in subs:
            if s.wants(type_, store_id, tags or ()):
                deliveries.append(_delivery(s.endpoint_id, seq, event_id, now))
                made[s.endpoint_id] = made.get(s.endpoint_id, 0) + 1
    if deliveries:
        conn.execute(insert(DELIVERIES), deliveries)
    return made


def _delivery(
    endpoint_id: str, seq: int, event_id: str, now: datetime, replay: bool = False
) -> dict[str, Any]:
    return {
        "endpoint_id": endpoint_id,
        "event_seq": seq,
        "event_id": event_id,
        "status": "pending",
        "attempts": 0,
        "replay": replay,
        "created_at": now,
        "next_attempt_at": now,
    }


def replay(
    conn: Connection, sub: Subscription, since: datetime, now: datetime, batch: int = 1000
) -> int:
    """Queue again, for one endpoint, every event recorded since ``since`` that it
    subscribes to (events already fanned out; the others will reach it anyway). The same
    event ids: a receiver that already has one recognises it."""
    queued = 0
    after = -1
    while True:
        rows = conn.execute(
            select(EVENTS.c.seq, EVENTS.c.id, EVENTS.c.type, EVENTS.c.store_id, EVENTS.c.store_tags)
            .where(EVENTS.c.recorded_at >= since, EVENTS.c.fanned_out, EVENTS.c.seq > after)
            .order_by(EVENTS.c.seq)
            .limit(batch)
        ).all()
        if not rows:
            return queued
        after = rows[-1].seq
        todo = [
            _delivery(sub.endpoint_id, r.seq, r.id, now, replay=True)
            for r in rows
            if sub.wants(r.type, r.store_id, r.store_tags or ())
        ]
        if todo:
            conn.execute(insert(DELIVERIES), todo)
            queued += len(todo)


# -- deliveries --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Claimed:
    """A delivery taken for one attempt, with what is sent."""

    delivery_id: int
    lease_token: str
    attempt: int
    created_at: datetime
    event_id: str
    envelope: dict[str, Any] | None  # None: the event is missing (counted as dropped)


def claim_due(
    conn: Connection, endpoint_id: str, now: datetime, limit: int, lease_s: float, token: str
) -> list[Claimed]:
    """Take up to ``limit`` due deliveries of one endpoint for an attempt: each is moved
    ``lease_s`` into the future (so a worker that dies mid-attempt leaves it due again) and
    stamped with ``token``."""
    rows = conn.execute(
        select(
            DELIVERIES.c.id,
            DELIVERIES.c.attempts,
            DELIVERIES.c.created_at,
            DELIVERIES.c.event_id,
            EVENTS.c.type,
            EVENTS.c.occurred_at,
            EVENTS.c.data,
        )
        .select_from(DELIVERIES.outerjoin(EVENTS, EVENTS.c.seq == DELIVERIES.c.event_seq))
        .where(
            DELIVERIES.c.endpoint_id == endpoint_id,
            DELIVERIES.c.status == "pending",
            DELIVERIES.c.next_attempt_at <= now,
        )
        .order_by(DELIVERIES.c.next_attempt_at, DELIVERIES.c.id)
        .limit(limit)
        .with_for_update(skip_locked=True, of=DELIVERIES)
    ).all()
    if not rows:
        return []
    conn.execute(
        update(DELIVERIES)
        .where(DELIVERIES.c.id.in_([r.id for r in rows]))
        .values(
            attempts=DELIVERIES.c.attempts + 1,
            next_attempt_at=now + timedelta(seconds=lease_s),
            lease_token=token,
            last_attempt_at=now,
        )
    )
    out = []
    for r in rows:
        envelope = None
        if r.type is not None:
            envelope = {
                "id": r.event_id,
                "type": r.type,
                "occurred_at": iso_z(r.occurred_at),
                "data": dict(r.data),
            }
        out.append(Claimed(r.id, token, r.attempts + 1, aware(r.created_at), r.event_id, envelope))
    return out


def finish_delivery(conn: Connection, claimed: Claimed, values: dict[str, Any]) -> bool:
    """Store an attempt's result unless another worker took the delivery since (its lease
    ran out): True if stored."""
    res = conn.execute(
        update(DELIVERIES)
        .where(
            DELIVERIES.c.id == claimed.delivery_id, DELIVERIES.c.lease_token == claimed.lease_token
        )
        .values(**values)
        .returning(DELIVERIES.c.id)
    )
    return res.first() is not None


def list_deliveries(
    conn: Connection,
    endpoint_id: str,
    *,
    limit: int,
    before_id: int | None,
    status: str | None,
) -> Sequence[Any]:
    """Newest first, with the event's type."""
    stmt = (
        select(DELIVERIES, EVENTS.c.type.label("event_type"))
        .select_from(DELIVERIES.outerjoin(EVENTS, EVENTS.c.seq == DELIVERIES.c.event_seq))
        .where(DELIVERIES.c.endpoint_id == endpoint_id)
        .order_by(DELIVERIES.c.id.desc())
        .limit(limit)
    )
    if before_id is not None:
        stmt = stmt.where(DELIVERIES.c.id < before_id)
    if status is not None:
        stmt = stmt.where(DELIVERIES.c.status == status)
    return conn.execute(stmt).all()
