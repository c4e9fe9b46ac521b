"""SQL for campaigns and the cross-campaign policies."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Table, func, select, update
from sqlalchemy.dialects import postgresql, sqlite

from service.db.models import CampaignRow, PolicyRow

CAMPAIGNS: Table = CampaignRow.__table__  # type: ignore[assignment]
POLICIES: Table = PolicyRow.__table__  # type: ignore[assignment]
_COLUMNS = (
    CAMPAIGNS.c.id, CAMPAIGNS.c.name, CAMPAIGNS.c.status, CAMPAIGNS.c.doc,
    CAMPAIGNS.c.created_at, CAMPAIGNS.c.updated_at,
)  # fmt: skip


def _insert(conn: Connection) -> Any:
    return postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert


def hashes(conn: Connection) -> dict[str, str]:
    return {
        r.id: r.content_hash for r in conn.execute(select(CAMPAIGNS.c.id, CAMPAIGNS.c.content_hash))
    }


def upsert(conn: Connection, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    stmt = _insert(conn)(CAMPAIGNS)
    stmt = stmt.on_conflict_do_update(
        index_elements=[CAMPAIGNS.c.id],
        set_={
            "name": stmt.excluded.name,
            "status": stmt.excluded.status,
            "doc": stmt.excluded.doc,
            "content_hash": stmt.excluded.content_hash,
            "updated_at": func.now(),
        },
    )
    conn.execute(stmt, rows)


def set_policies(conn: Connection, doc: dict[str, Any]) -> bool:
    """Store the policies; True if they changed."""
    old = get_policies(conn)
    if old == doc:
        return False
    stmt = _insert(conn)(POLICIES).values(name="default", doc=doc)
    stmt = stmt.on_conflict_do_update(index_elements=[POLICIES.c.name], set_={"doc": doc})
    conn.execute(stmt)
    return True


def get_policies(conn: Connection) -> dict[str, Any] | None:
    row = conn.execute(select(POLICIES.c.doc).where(POLICIES.c.name == "default")).first()
    return dict(row[0]) if row else None


def list_all(conn: Connection) -> list[Any]:
    return list(conn.execute(select(*_COLUMNS).order_by(CAMPAIGNS.c.id)))


def get(conn: Connection, campaign_id: str) -> Any:
    return conn.execute(select(*_COLUMNS).where(CAMPAIGNS.c.id == campaign_id)).first()


def set_status(conn: Connection, campaign_id: str, status: str, doc: dict[str, Any]) -> None:
    conn.execute(
        update(CAMPAIGNS)
        .where(CAMPAIGNS.c.id == campaign_id)
        .values(status=status, doc=doc, updated_at=func.now())
    )
