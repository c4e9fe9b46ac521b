"""Data versions: one counter per data set, bumped in the transaction that changes it.

Replicas poll these to know when to reload; writers lock the row so changes to one data
set (imports, deletes, status changes) run one at a time across replicas.
"""

from __future__ import annotations

from sqlalchemy import Connection, select, update

from service.db.models import DataVersion

FENCES = "geofences"
CAMPAIGNS = "campaigns"


def lock(conn: Connection, name: str) -> int:
    stmt = select(DataVersion.version).where(DataVersion.name == name)
    if conn.dialect.name == "postgresql":
        stmt = stmt.with_for_update()
    return int(conn.execute(stmt).scalar_one())


def bump(conn: Connection, name: str) -> int:
    conn.execute(
        update(DataVersion).where(DataVersion.name == name).values(version=DataVersion.version + 1)
    )
    return current(conn, name)


def current(conn: Connection, name: str) -> int:
    return int(
        conn.execute(select(DataVersion.version).where(DataVersion.name == name)).scalar_one()
    )
