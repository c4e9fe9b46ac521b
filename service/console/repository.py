"""SQL of the console: sessions, staged uploads, and the small reads its pages need."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    Connection,
    Date,
    Table,
    cast,
    delete,
    func,
    insert,
    literal,
    select,
    true,
    update,
)
from sqlalchemy.dialects import postgresql

from service.db.models import (
    ApiKey,
    ConsoleSession,
    ConsoleUpload,
    ConsoleUploadChunk,
    Geofence,
    OfferRow,
    RedemptionRow,
)

SESSIONS: Table = ConsoleSession.__table__  # type: ignore[assignment]
UPLOADS: Table = ConsoleUpload.__table__  # type: ignore[assignment]
CHUNKS: Table = ConsoleUploadChunk.__table__  # type: ignore[assignment]
KEYS: Table = ApiKey.__table__  # type: ignore[assignment]
FENCES: Table = Geofence.__table__  # type: ignore[assignment]
OFFERS: Table = OfferRow.__table__  # type: ignore[assignment]
REDEMPTIONS: Table = RedemptionRow.__table__  # type: ignore[assignment]


# --- sessions -------------------------------------------------------------------------


def key_id_of(conn: Connection, key_hash: str) -> str | None:
    row = conn.execute(
        select(KEYS.c.id).where(KEYS.c.key_hash == key_hash, KEYS.c.revoked_at.is_(None))
    ).first()
    return None if row is None else str(row[0])


def insert_session(
    conn: Connection, id_hash: str, key_id: str, now: datetime, expires_at: datetime
) -> None:
    conn.execute(delete(SESSIONS).where(SESSIONS.c.expires_at < now))  # sweep the expired
    conn.execute(
        insert(SESSIONS).values(
            id_hash=id_hash, key_id=key_id, created_at=now, expires_at=expires_at
        )
    )


def live_session(conn: Connection, id_hash: str, now: datetime) -> Any:
    """The session, if it has not expired and its admin key is not revoked."""
    return conn.execute(
        select(SESSIONS.c.id_hash, SESSIONS.c.key_id, SESSIONS.c.expires_at)
        .select_from(SESSIONS.join(KEYS, KEYS.c.id == SESSIONS.c.key_id))
        .where(
            SESSIONS.c.id_hash == id_hash,
            SESSIONS.c.expires_at > now,
            KEYS.c.revoked_at.is_(None),
            KEYS.c.role == "admin",
        )
    ).first()


def delete_session(conn: Connection, id_hash: str) -> None:
    conn.execute(delete(SESSIONS).where(SESSIONS.c.id_hash == id_hash))


# --- staged uploads -------------------------------------------------------------------


def insert_upload(conn: Connection, row: dict[str, Any], stale_before: datetime) -> None:
    stale = select(UPLOADS.c.id).where(UPLOADS.c.created_at < stale_before)
    conn.execute(delete(CHUNKS).where(CHUNKS.c.upload_id.in_(stale)))
    conn.execute(delete(UPLOADS).where(UPLOADS.c.created_at < stale_before))
    conn.execute(insert(UPLOADS).values(**row))


def get_upload(conn: Connection, upload_id: str, session_hash: str) -> Any:
    return conn.execute(
        select(UPLOADS).where(UPLOADS.c.id == upload_id, UPLOADS.c.session_hash == session_hash)
    ).first()


def put_chunk(conn: Connection, upload_id: str, seq: int, data: bytes) -> None:
    """Store one chunk; a retried chunk replaces the first copy."""
    conn.execute(delete(CHUNKS).where(CHUNKS.c.upload_id == upload_id, CHUNKS.c.seq == seq))
    conn.execute(insert(CHUNKS).values(upload_id=upload_id, seq=seq, data=data))


def chunk_sizes(conn: Connection, upload_id: str) -> list[tuple[int, int]]:
    return [
        (int(seq), int(size))
        for seq, size in conn.execute(
            select(CHUNKS.c.seq, func.length(CHUNKS.c.data))
            .where(CHUNKS.c.upload_id == upload_id)
            .order_by(CHUNKS.c.seq)
        )
    ]


def chunk(conn: Connection, upload_id: str, seq: int) -> bytes:
    return bytes(
        conn.execute(
            select(CHUNKS.c.data).where(CHUNKS.c.upload_id == upload_id, CHUNKS.c.seq == seq)
        ).scalar_one()
    )


def set_progress(conn: Connection, upload_id: str, done: int) -> None:
    conn.execute(update(UPLOADS).where(UPLOADS.c.id == upload_id).values(progress=done))


def delete_upload(conn: Connection, upload_id: str) -> None:
    conn.execute(delete(CHUNKS).where(CHUNKS.c.upload_id == upload_id))
    conn.execute(delete(UPLOADS).where(UPLOADS.c.id == upload_id))


# --- stores ---------------------------------------------------------------------------


def search_stores(conn: Connection, q: str, tag: str | None, limit: int) -> list[Any]:
    """Stores whose id starts with ``q`` or whose name contains it (case-insensitive)."""
    pattern = q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    stmt = select(
        FENCES.c.store_id, FENCES.c.name, FENCES.c.lat, FENCES.c.lng, FENCES.c.kind,
        FENCES.c.radius_m,
    ).where(
        FENCES.c.store_id.ilike(f"{pattern}%", escape="\\")
        | FENCES.c.name.ilike(f"%{pattern}%", escape="\\")
    )  # fmt: skip
    if tag:
        stmt = stmt.where(_has_tag(conn, tag))
    # Exact id first, then id prefix, then name matches.
    exact = (FENCES.c.store_id == q).desc()
    prefix = FENCES.c.store_id.ilike(f"{pattern}%", escape="\\").desc()
    return list(conn.execute(stmt.order_by(exact, prefix, FENCES.c.store_id).limit(limit)))


def _has_tag(conn: Connection, tag: str) -> Any:
    if conn.dialect.name == "postgresql":
        return cast(FENCES.c.tags, postgresql.JSONB).contains([tag])
    each = func.json_each(FENCES.c.tags).table_valued("value")
    return select(literal(1)).select_from(each).where(each.c.value == tag).exists()


def all_tags(conn: Connection, limit: int = 500) -> list[str]:
    """Distinct fence tags (at most ``limit``), sorted."""
    if conn.dialect.name == "postgresql":
        value = func.jsonb_array_elements_text(FENCES.c.tags).table_valued("value")
    else:
        value = func.json_each(FENCES.c.tags).table_valued("value")
    stmt = select(value.c.value).select_from(FENCES.join(value, true()))
    stmt = stmt.distinct().order_by(value.c.value).limit(limit)
    return [str(r[0]) for r in conn.execute(stmt)]


def fence_count(conn: Connection) -> int:
    return int(conn.execute(select(func.count()).select_from(FENCES)).scalar_one())


# --- campaigns and reports ------------------------------------------------------------


def issued_since(conn: Connection, since: datetime) -> dict[str, int]:
    """Offers issued per campaign at or after ``since``."""
    rows = conn.execute(
        select(OFFERS.c.campaign_id, func.count())
        .where(OFFERS.c.issued_at >= since)
        .group_by(OFFERS.c.campaign_id)
    )
    return {str(c): int(n) for c, n in rows}


def _utc_day(conn: Connection, column: Any) -> Any:
    if conn.dialect.name == "postgresql":
        return cast(func.timezone("UTC", column), Date)
    return func.date(column)  # SQLite stores UTC text; date() takes its day


def daily_counts(
    conn: Connection, campaign_id: str, since: datetime
) -> tuple[dict[str, int], dict[str, int]]:
    """Issued offers and redemptions per UTC day (``YYYY-MM-DD``) since ``since``."""

    def per_day(table: Table, column: Any) -> dict[str, int]:
        day = _utc_day(conn, column).label("day")
        rows = conn.execute(
            select(day, func.count())
            .where(table.c.campaign_id == campaign_id, column >= since)
            .group_by(day)
        )
        return {str(d)[:10]: int(n) for d, n in rows}

    return (
        per_day(OFFERS, OFFERS.c.issued_at),
        per_day(REDEMPTIONS, REDEMPTIONS.c.redeemed_at),
    )


def iter_days(start: datetime, days: int) -> Iterator[str]:
    for i in range(days):
        yield (start + timedelta(days=i)).date().isoformat()
