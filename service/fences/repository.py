"""SQL for geofences; the only module that knows the two backends apart.

PostgreSQL gets PostGIS expressions (the ``location::geography`` GiST index answers "near a
point"); the embedded SQLite default filters by a latitude band in SQL and finishes in
Python with the same sphere distance.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from geoalchemy2 import Geography
from sqlalchemy import Connection, Table, cast, delete, func, select, text, type_coerce
from sqlalchemy.dialects import postgresql, sqlite

from geofences import FenceRecord, sphere_distance_m
from service.db import versions
from service.db.models import Geofence

T: Table = Geofence.__table__  # type: ignore[assignment]
_PUBLIC_COLUMNS = (
    T.c.store_id, T.c.name, T.c.kind, T.c.lat, T.c.lng, T.c.radius_m, T.c.geometry_json,
    T.c.tags, T.c.timezone, T.c.address, T.c.extra, T.c.created_at, T.c.updated_at,
)  # fmt: skip


def _is_pg(conn: Connection) -> bool:
    return conn.dialect.name == "postgresql"


# --- data version (the fence set's counter) -------------------------------------------


def lock_version(conn: Connection) -> int:
    """Lock the fence data version row until commit: imports and deletes run one at a time."""
    return versions.lock(conn, versions.FENCES)


def bump_version(conn: Connection) -> int:
    return versions.bump(conn, versions.FENCES)


def current_version(conn: Connection) -> int:
    return versions.current(conn, versions.FENCES)


# --- writes ---------------------------------------------------------------------------


def _ring_wkt(ring: list[list[float]]) -> str:
    # repr() is Python's shortest round-trip form: PostGIS stores the very same doubles the
    # index tests against (shapely's WKT writer keeps only 16 significant digits).
    return "(" + ", ".join(f"{float(x)!r} {float(y)!r}" for x, y, *_ in ring) + ")"


def _polygon_wkt(geometry: dict[str, Any]) -> str:
    """WKT of a GeoJSON Polygon/MultiPolygon with exact coordinates (x y = lng lat)."""
    if geometry["type"] == "Polygon":
        return "POLYGON (" + ", ".join(_ring_wkt(r) for r in geometry["coordinates"]) + ")"
    polys = ("(" + ", ".join(_ring_wkt(r) for r in poly) + ")" for poly in geometry["coordinates"])
    return "MULTIPOLYGON (" + ", ".join(polys) + ")"


def record_to_row(rec: FenceRecord) -> dict[str, Any]:
    geometry_json = orjson.dumps(rec.geometry).decode() if rec.geometry is not None else None
    shape = f"SRID=4326;{_polygon_wkt(rec.geometry)}" if rec.geometry is not None else None
    row: dict[str, Any] = {
        "store_id": rec.store_id,
        "name": rec.name,
        "kind": rec.kind,
        "lat": rec.lat,
        "lng": rec.lng,
        "radius_m": rec.radius_m,
        "geometry_json": geometry_json,
        # WKT is x y = lng lat.
        "location": f"SRID=4326;POINT({rec.lng!r} {rec.lat!r})",
        "shape": shape,
        "tags": list(rec.tags),
        "timezone": rec.timezone,
        "address": rec.address,
        "extra": dict(rec.extra),
    }
    digest = orjson.dumps(
        [row[k] for k in ("name", "kind", "lat", "lng", "radius_m", "geometry_json", "tags",
                          "timezone", "address", "extra")],
        option=orjson.OPT_SORT_KEYS,
    )  # fmt: skip
    row["content_hash"] = hashlib.md5(digest, usedforsecurity=False).hexdigest()
    return row


#: Columns of the staging table an import streams into with COPY (PostgreSQL), in order.
STAGE_COLUMNS = (
    "store_id", "name", "kind", "lat", "lng", "radius_m", "geometry_json", "shape", "tags",
    "timezone", "address", "extra", "content_hash",
)  # fmt: skip


def stage_values(rec: FenceRecord) -> tuple[Any, ...]:
    """``rec`` as a staging row: :func:`record_to_row` without the dict, the store point's
    WKT (made in SQL from lat, lng) or the SQLAlchemy bind processing (4 us less a row)."""
    geometry_json = orjson.dumps(rec.geometry).decode() if rec.geometry is not None else None
    shape = f"SRID=4326;{_polygon_wkt(rec.geometry)}" if rec.geometry is not None else None
    kind = "circle" if rec.geometry is None else "polygon"
    tags = list(rec.tags)
    extra = dict(rec.extra)
    digest = orjson.dumps(
        [rec.name, kind, rec.lat, rec.lng, rec.radius_m, geometry_json, tags, rec.timezone,
         rec.address, extra],
        option=orjson.OPT_SORT_KEYS,
    )  # fmt: skip
    return (
        rec.store_id, rec.name, kind, rec.lat, rec.lng, rec.radius_m, geometry_json, shape,
        orjson.dumps(tags).decode(), rec.timezone, rec.address, orjson.dumps(extra).decode(),
        hashlib.md5(digest, usedforsecurity=False).hexdigest(),
    )  # fmt: skip


def existing_hashes(conn: Connection, store_ids: Sequence[str]) -> dict[str, str]:
    rows = conn.execute(select(T.c.store_id, T.c.content_hash).where(T.c.store_id.in_(store_ids)))
    return {r.store_id: r.content_hash for r in rows}


def upsert(conn: Connection, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    dialect_insert = postgresql.insert if _is_pg(conn) else sqlite.insert
    stmt = dialect_insert(T)
    changed: dict[str, Any] = {c: stmt.excluded[c] for c in rows[0] if c != "store_id"}
    changed["updated_at"] = func.now()
    stmt = stmt.on_conflict_do_update(index_elements=[T.c.store_id], set_=changed)
    conn.execute(stmt, rows)


def delete_one(conn: Connection, store_id: str) -> bool:
    return bool(conn.execute(delete(T).where(T.c.store_id == store_id)).rowcount)


def delete_missing(conn: Connection, keep: set[str], batch: int = 1000) -> list[str]:
    """Delete every fence whose store_id is not in ``keep`` (``mode=replace``); returns the
    deleted ids."""
    gone: list[str] = []
    # execution_options on the statement: on the Connection they would stick to it.
    ids = conn.execute(select(T.c.store_id).execution_options(yield_per=10_000))
    for (store_id,) in ids:
        if store_id not in keep:
            gone.append(store_id)
    for i in range(0, len(gone), batch):
        conn.execute(delete(T).where(T.c.store_id.in_(gone[i : i + batch])))
    return gone


# --- reads ----------------------------------------------------------------------------


def get(conn: Connection, store_id: str) -> Any:
    return conn.execute(select(*_PUBLIC_COLUMNS).where(T.c.store_id == store_id)).first()


@dataclass(frozen=True, slots=True)
class Near:
    lat: float
    lng: float
    within_m: float


def list_page(
    conn: Connection, *, limit: int, after: str | None, tag: str | None, near: Near | None
) -> list[tuple[Any, float | None]]:
    """One page of fences: by store_id after a cursor, or, with ``near``, closest first."""
    stmt = select(*_PUBLIC_COLUMNS)
    if tag is not None:
        if _is_pg(conn):
            stmt = stmt.where(type_coerce(T.c.tags, postgresql.JSONB).contains([tag]))
        else:
            stmt = stmt.where(
                text(
                    "EXISTS (SELECT 1 FROM json_each(geofences.tags) WHERE value = :tag)"
                ).bindparams(tag=tag)
            )
    if near is None:
        if after is not None:
            stmt = stmt.where(T.c.store_id > after)
        return [(row, None) for row in conn.execute(stmt.order_by(T.c.store_id).limit(limit))]
    if _is_pg(conn):
        point = cast(func.ST_SetSRID(func.ST_MakePoint(near.lng, near.lat), 4326), Geography)
        here = cast(T.c.location, Geography)
        dist = func.ST_Distance(here, point, False).label("distance_m")
        stmt = (
            stmt.add_columns(dist)
            .where(func.ST_DWithin(here, point, near.within_m, False))
            .order_by(dist, T.c.store_id)
            .limit(limit)
        )
        return [(row, float(row.distance_m)) for row in conn.execute(stmt)]
    # SQLite: a latitude band in SQL (index on lat), exact sphere distance in Python.
    dlat = math.degrees(near.within_m / 6_371_008.7714) + 1e-6
    stmt = stmt.where(T.c.lat.between(near.lat - dlat, near.lat + dlat))
    hits: list[tuple[Any, float | None]] = []
    for row in conn.execute(stmt):
        d = sphere_distance_m(row.lat, row.lng, near.lat, near.lng)
        if d <= near.within_m:
            hits.append((row, d))
    hits.sort(key=lambda h: (h[1], h[0].store_id))
    return hits[:limit]
