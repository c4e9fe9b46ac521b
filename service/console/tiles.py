"""Vector tiles (MVT) of every fence for the console's map, on both backends.

Three levels of detail, the same on both:

- zoom <= ``CLUSTER_MAX_Z``: one ``clusters`` feature per grid cell of ``CELLS`` x ``CELLS``
  cells per tile (a cell is 64 px on a 512 px tile) with the fence ``count`` at the cells'
  mean position; a cell of one fence also carries its ``store_id``;
- up to ``SHAPE_MIN_Z - 1``: a ``fences`` layer with circles as points (``radius_m`` as a
  property) and polygons as drawn;
- from ``SHAPE_MIN_Z``: circles as polygons at their true radius, polygons as drawn.

On PostgreSQL the tile is one ``ST_AsMVT`` query over the ``geofences`` table, the way tipg
serves tiles (``ST_TileEnvelope`` for the bounds, ``ST_AsMVTGeom`` to clip and quantize).
On the embedded default it comes from the replica's in-memory index through
:func:`fence_columns` and is encoded with ``mapbox-vector-tile``.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import mapbox_vector_tile
import numpy as np
import shapely
from numpy.typing import NDArray
from sqlalchemy import Connection, Engine, text

from geofences import EARTH_RADIUS_M
from service.db import versions

EXTENT = 4096
BUFFER = 64
CELLS = 8
CLUSTER_MAX_Z = 10
SHAPE_MIN_Z = 14
MAX_Z = 22
MAX_LAT = 85.0511287798066  # Web Mercator's edge
# The largest circle (DESIGN §3: 10 km) in degrees of latitude, with a margin.
_MAX_RADIUS_DEG = 10_000 / 111_000 * 1.05


class TileOutOfRange(ValueError):
    pass


def check_tile(z: int, x: int, y: int) -> None:
    if not 0 <= z <= MAX_Z:
        raise TileOutOfRange(f"zoom {z} is outside 0..{MAX_Z}")
    n = 1 << z
    if not (0 <= x < n and 0 <= y < n):
        raise TileOutOfRange(f"tile {z}/{x}/{y} does not exist (x and y are 0..{n - 1})")


def tile_bounds_lnglat(z: int, x: int, y: int) -> tuple[float, float, float, float]:
    """(west, south, east, north) of an XYZ tile in degrees."""
    n = 1 << z

    def lat(ty: int) -> float:
        return math.degrees(math.atan(math.sinh(math.pi * (1 - 2 * ty / n))))

    return x / n * 360 - 180, lat(y + 1), (x + 1) / n * 360 - 180, lat(y)


# --- PostgreSQL: ST_AsMVT --------------------------------------------------------------

# Mercator grid cell of a store point, from the plain lat/lng columns (cheap arithmetic per
# row; ST_Transform of every point was the slow part at low zooms).
_CELL_X = "floor((g.lng + 180.0) / 360.0 * :n)"
_CELL_Y = (
    "floor((1.0 - ln(tan(radians(greatest(least(g.lat, 85.0511), -85.0511))) "
    "+ 1.0 / cos(radians(greatest(least(g.lat, 85.0511), -85.0511)))) / pi()) / 2.0 * :n)"
)

# Both cluster queries end alike: a ``cells`` CTE (one row per cluster) as MVT points.
_CLUSTERS_MVT = f"""SELECT ST_AsMVT(q, 'clusters', {EXTENT}, 'geom') FROM (
    SELECT ST_AsMVTGeom(ST_Transform(ST_SetSRID(ST_MakePoint(c.lng, c.lat), 4326), 3857),
                        t.env, {EXTENT}, {BUFFER}, true) AS geom,
           c.n_fences AS count,
           CASE WHEN c.n_fences = 1 THEN c.store_id END AS store_id
    FROM cells c, t
) q WHERE q.geom IS NOT NULL
"""

_PG_CLUSTERS = text(f"""
WITH t AS (SELECT ST_TileEnvelope(:z, :x, :y) AS env),
cells AS (
    SELECT {_CELL_X} AS cx, {_CELL_Y} AS cy, count(*) AS n_fences,
           avg(g.lng) AS lng, avg(g.lat) AS lat, min(g.store_id) AS store_id
    FROM geofences g
    WHERE g.location && ST_MakeEnvelope(:w, :s, :e, :nn, 4326)
      AND g.lng >= :w AND g.lng < :e AND g.lat > :s AND g.lat <= :nn {{tag}}
    GROUP BY 1, 2
)
{_CLUSTERS_MVT}""")

_PG_FENCES = text(f"""
WITH t AS (SELECT ST_TileEnvelope(:z, :x, :y) AS env)
SELECT ST_AsMVT(q, 'fences', {EXTENT}, 'geom') FROM (
    SELECT ST_AsMVTGeom(ST_Transform(
               CASE WHEN g.kind = 'polygon' THEN g.shape
                    WHEN :shapes THEN ST_Buffer(g.location::geography, g.radius_m,
                                                'quad_segs=12')::geometry
                    ELSE g.location END, 3857),
               t.env, {EXTENT}, {BUFFER}, true) AS geom,
           g.store_id, g.name, g.kind, g.radius_m
    FROM geofences g, t
    WHERE ((g.location && ST_MakeEnvelope(:w2, :s2, :e2, :n2, 4326)
            -- each circle by its own radius (in degrees of longitude, the wider axis)
            AND (NOT :shapes OR g.kind = 'polygon'
                 OR ST_Expand(g.location, g.radius_m * :deg_per_m
                              / cos(radians(least(abs(g.lat), 89.0))))
                    && ST_MakeEnvelope(:w, :s, :e, :nn, 4326)))
           OR g.shape && ST_MakeEnvelope(:w, :s, :e, :nn, 4326)) {{tag}}
) q WHERE q.geom IS NOT NULL
""")


# Zooms 0..SUMMARY_Z read per-version cell counts (``console_fence_cells``) instead of the
# whole table: one aggregation per fence version, then a few milliseconds a tile.
SUMMARY_Z = 5
_SUMMARY_N = (1 << SUMMARY_Z) * CELLS
_CELLS_LOCK = 7_461_032_613  # advisory lock: one replica builds a version's cells

_PG_CELLS_BUILD = text(f"""
INSERT INTO console_fence_cells (version, cx, cy, n, lng, lat, store_id)
SELECT :v, {_CELL_X}, {_CELL_Y}, count(*), avg(g.lng), avg(g.lat), min(g.store_id)
FROM geofences g
WHERE g.lng >= -180 AND g.lng < 180 AND g.lat > -{MAX_LAT} AND g.lat <= {MAX_LAT}
GROUP BY 2, 3
""")

_PG_FROM_CELLS = text(f"""
WITH t AS (SELECT ST_TileEnvelope(:z, :x, :y) AS env),
cells AS (
    SELECT c.cx >> :shift AS gx, c.cy >> :shift AS gy, sum(c.n) AS n_fences,
           sum(c.lng * c.n) / sum(c.n) AS lng, sum(c.lat * c.n) / sum(c.n) AS lat,
           min(c.store_id) AS store_id
    FROM console_fence_cells c
    WHERE c.version = :v AND c.cx BETWEEN :cx0 AND :cx1 AND c.cy BETWEEN :cy0 AND :cy1
    GROUP BY 1, 2
)
{_CLUSTERS_MVT}""")


def build_pg_cells(engine: Engine) -> int:
    """Count the fences per summary cell for the current fence version (once per version,
    across replicas); returns that version."""
    with engine.connect() as conn:
        conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _CELLS_LOCK})
        conn.commit()
        try:
            # One snapshot for the version and the fences it counts.
            conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                version = versions.current(conn, versions.FENCES)
                done = conn.execute(
                    text("SELECT 1 FROM console_fence_cell_versions WHERE version = :v"),
                    {"v": version},
                ).first()
                if done is None:
                    conn.execute(text("SET LOCAL jit = off"))
                    conn.execute(_PG_CELLS_BUILD, {"v": version, "n": _SUMMARY_N})
                    conn.execute(
                        text(
                            "INSERT INTO console_fence_cell_versions (version, built_at) "
                            "VALUES (:v, now())"
                        ),
                        {"v": version},
                    )
                    for table in ("console_fence_cells", "console_fence_cell_versions"):
                        conn.execute(
                            text(f"DELETE FROM {table} WHERE version < :v"), {"v": version}
                        )
            return version
        finally:
            conn.execution_options(isolation_level="READ COMMITTED")
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _CELLS_LOCK})
            conn.commit()


def _tag_sql(tag: str | None) -> str:
    return "AND g.tags @> CAST(:tag AS jsonb)" if tag else ""


def pg_tile(
    conn: Connection,
    z: int,
    x: int,
    y: int,
    tag: str | None = None,
    cells_version: int | None = None,
) -> bytes:
    """One tile from PostGIS (``ST_AsMVT``); empty bytes when no fence is in it.

    With ``cells_version`` (cells built by :func:`build_pg_cells`), untagged tiles up to
    ``SUMMARY_Z`` are aggregated from the cells instead of the table.
    """
    check_tile(z, x, y)
    conn.execute(text("SET LOCAL jit = off"))  # JIT compiled for ~200 ms and saved nothing
    if cells_version is not None and z <= SUMMARY_Z and not tag:
        span = 1 << (SUMMARY_Z - z + 3)  # summary cells per tile side (8 cells a tile at z)
        cells = {
            "v": cells_version, "z": z, "x": x, "y": y, "shift": SUMMARY_Z - z,
            "cx0": x * span, "cx1": (x + 1) * span - 1, "cy0": y * span, "cy1": (y + 1) * span - 1,
        }  # fmt: skip
        return bytes(conn.execute(_PG_FROM_CELLS, cells).scalar_one() or b"")
    w, s, e, n = tile_bounds_lnglat(z, x, y)
    params: dict[str, Any] = {"z": z, "x": x, "y": y, "w": w, "s": s, "e": e, "nn": n}
    if tag:
        params["tag"] = f'["{_json_escape(tag)}"]'
    if z <= CLUSTER_MAX_Z:
        params["n"] = (1 << z) * CELLS
        stmt = text(_PG_CLUSTERS.text.replace("{tag}", _tag_sql(tag)))
    else:
        # A circle whose centre lies outside the tile may still reach into it (drawn as its
        # shape from SHAPE_MIN_Z); points need only the tile's buffer.
        shapes = z >= SHAPE_MIN_Z
        dlat = _MAX_RADIUS_DEG if shapes else (n - s) * BUFFER / EXTENT
        far = min(max(abs(s), abs(n)) + dlat, 89.0)
        dlng = dlat / math.cos(math.radians(far)) if shapes else (e - w) * BUFFER / EXTENT
        params.update(
            shapes=shapes, deg_per_m=1.0 / 111_000 * 1.01,
            w2=w - dlng, e2=e + dlng, s2=max(s - dlat, -90.0), n2=min(n + dlat, 90.0),
        )  # fmt: skip
        stmt = text(_PG_FENCES.text.replace("{tag}", _tag_sql(tag)))
    data = conn.execute(stmt, params).scalar_one()
    return bytes(data or b"")


def _json_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


# --- embedded default: the in-memory index ---------------------------------------------


@dataclass(frozen=True)
class FenceColumns:
    """The fences of one index as columns (store point in lng/lat and Web Mercator 0..1)."""

    store_id: Sequence[str]
    name: Sequence[str]
    kind: Sequence[str]
    tags: Sequence[tuple[str, ...]]
    lat: NDArray[np.float64]
    lng: NDArray[np.float64]
    radius_m: NDArray[np.float64]  # NaN for polygons
    shapes: dict[int, Any]  # row -> shapely polygon (lng/lat) of polygon fences
    mx: NDArray[np.float64]
    my: NDArray[np.float64]
    by_mx: NDArray[np.intp] = field(default_factory=lambda: np.zeros(0, dtype=np.intp))
    mx_sorted: NDArray[np.float64] = field(default_factory=lambda: np.zeros(0))
    shape_rows: NDArray[np.intp] = field(default_factory=lambda: np.zeros(0, dtype=np.intp))
    shape_tree: Any = None  # STRtree over the polygons, in shape_rows order
    tag_masks: dict[str, NDArray[np.bool_]] = field(default_factory=dict)

    def tag_mask(self, tag: str) -> NDArray[np.bool_]:
        mask = self.tag_masks.get(tag)
        if mask is None:
            mask = np.fromiter((tag in t for t in self.tags), dtype=bool, count=len(self.tags))
            self.tag_masks[tag] = mask
        return mask


class _PerFence(Sequence[Any]):
    """One attribute of every fence of an index, read from the fence when asked for: the
    console touches the names and tags of the fences of one tile, not of all of them."""

    def __init__(self, columns: Any, attr: str) -> None:
        self._columns = columns
        self._attr = attr

    def __len__(self) -> int:
        return len(self._columns)

    def __getitem__(self, row: Any) -> Any:
        if self._attr == "store_id":
            return self._columns.store_id(int(row))
        return getattr(self._columns.fence(int(row)), self._attr)


def fence_columns(index: Any) -> FenceColumns:
    """The fences of the in-memory index as columns, once per index view: store points and
    radii from the index's own arrays (``index.columns()``), the rest per fence on demand."""
    cols = index.columns()
    lat_a = np.asarray(cols.lat, dtype=np.float64)
    lng_a = np.asarray(cols.lng, dtype=np.float64)
    radius = np.asarray(cols.radius_m, dtype=np.float64)
    polygon = np.isnan(radius)
    kind = np.where(polygon, "polygon", "circle").tolist()
    shapes = {int(r): cols.fence(int(r)).geom for r in np.flatnonzero(polygon)}
    mx, my = _mercator(lat_a, lng_a)
    shape_rows = np.fromiter(shapes, dtype=np.intp, count=len(shapes))
    by_mx = np.argsort(mx, kind="stable")  # a tile's columns of fences are one slice of it
    return FenceColumns(
        _PerFence(cols, "store_id"), _PerFence(cols, "name"), kind, _PerFence(cols, "tags"),
        lat_a, lng_a, radius, shapes, mx, my, by_mx, mx[by_mx], shape_rows,
        shapely.STRtree([shapes[int(r)] for r in shape_rows]),
    )  # fmt: skip


def _mercator(
    lat: NDArray[np.float64], lng: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Web Mercator in 0..1 (x east, y south) of lng/lat arrays."""
    phi = np.radians(np.clip(lat, -MAX_LAT, MAX_LAT))
    mx = (lng + 180.0) / 360.0
    my = (1.0 - np.log(np.tan(phi) + 1.0 / np.cos(phi)) / math.pi) / 2.0
    return mx, my


class ColumnsCache:
    """:func:`fence_columns` of the index being served, rebuilt when the index is swapped."""

    def __init__(self) -> None:
        self._index: Any = None
        self._columns: FenceColumns | None = None
        self._lock = threading.Lock()  # tiles are drawn in worker threads

    def get(self, index: Any) -> FenceColumns:
        with self._lock:
            if index is not self._index or self._columns is None:
                self._columns = fence_columns(index)
                self._index = index
            return self._columns


def memory_tile(cols: FenceColumns, z: int, x: int, y: int, tag: str | None = None) -> bytes:
    """One tile from the in-memory fences, in the same layers as :func:`pg_tile`."""
    check_tile(z, x, y)
    n = float(1 << z)
    w, s, e, north = tile_bounds_lnglat(z, x, y)
    margin = 0.0 if z <= CLUSTER_MAX_Z else BUFFER / EXTENT
    metres_per_tile = 2 * math.pi * EARTH_RADIUS_M / n  # at the equator
    reach = margin
    if z >= SHAPE_MIN_Z:
        # A circle reaching in from outside: the largest radius, in tiles at this latitude.
        far = min(max(abs(s), abs(north)) + _MAX_RADIUS_DEG, 89.0)
        reach += 10_500 / (metres_per_tile * math.cos(math.radians(far)))
    lo, hi = np.searchsorted(cols.mx_sorted, [(x - reach) / n, (x + 1 + reach) / n])
    band = cols.by_mx[lo:hi]  # the fences in this tile's column (and its margin)
    tx = cols.mx[band] * n - x  # tile-local coordinates: 0..1 inside the tile, y down
    ty = cols.my[band] * n - y
    if z <= CLUSTER_MAX_Z:
        inside = (tx >= 0) & (tx < 1) & (ty >= 0) & (ty < 1)
        if tag:
            inside &= cols.tag_mask(tag)[band]
        return _encode_clusters(cols, band[inside], tx[inside], ty[inside])
    # Each circle by its own radius (in tiles at its latitude), so only those that reach in.
    r_tiles = np.zeros(band.size)
    if z >= SHAPE_MIN_Z:
        cos_lat = np.cos(np.radians(np.clip(cols.lat[band], -89.0, 89.0)))
        r_tiles = np.nan_to_num(cols.radius_m[band]) / (metres_per_tile * cos_lat)
    m = margin + r_tiles
    near = (tx >= -m) & (tx < 1 + m) & (ty >= -m) & (ty < 1 + m)
    if tag:
        near &= cols.tag_mask(tag)[band]
    picked = {
        int(r): (float(a), float(b)) for r, a, b in zip(band[near], tx[near], ty[near], strict=True)
    }
    hits = cols.shape_tree.query(shapely.box(w, s, e, north), predicate="intersects")
    for r in cols.shape_rows[hits].tolist():  # polygons as drawn, wherever their point is
        if _tag_ok(cols, r, tag):
            picked.setdefault(r, (0.0, 0.0))
    clip = shapely.box(-BUFFER, -BUFFER, EXTENT + BUFFER, EXTENT + BUFFER)
    features = []
    for r in sorted(picked):
        if cols.kind[r] == "polygon":
            geom = _to_tile(cols.shapes[r], z, x, y)
        elif z >= SHAPE_MIN_Z:
            geom = _to_tile(_circle(cols.lat[r], cols.lng[r], cols.radius_m[r]), z, x, y)
        else:
            px, py = picked[r]
            geom = shapely.Point(px * EXTENT, py * EXTENT)
        geom = shapely.clip_by_rect(geom, *clip.bounds) if geom.geom_type != "Point" else geom
        if geom.is_empty or (geom.geom_type == "Point" and not clip.covers(geom)):
            continue
        props: dict[str, Any] = {"store_id": cols.store_id[r], "name": cols.name[r],
                                 "kind": cols.kind[r]}  # fmt: skip
        if cols.kind[r] == "circle":
            props["radius_m"] = float(cols.radius_m[r])
        features.append({"geometry": geom, "properties": props})
    if not features:
        return b""
    return _encode("fences", features)


def _tag_ok(cols: FenceColumns, row: int, tag: str | None) -> bool:
    return not tag or tag in cols.tags[row]


def _encode_clusters(
    cols: FenceColumns, rows: NDArray[np.intp], tx: NDArray[np.float64], ty: NDArray[np.float64]
) -> bytes:
    """Clusters of ``rows`` (with their tile-local coordinates ``tx``, ``ty``)."""
    if rows.size == 0:
        return b""
    cx = np.minimum((tx * CELLS).astype(np.int64), CELLS - 1)
    cy = np.minimum((ty * CELLS).astype(np.int64), CELLS - 1)
    keys, inverse, counts = np.unique(cy * CELLS + cx, return_inverse=True, return_counts=True)
    sum_x = np.bincount(inverse, weights=tx, minlength=keys.size)
    sum_y = np.bincount(inverse, weights=ty, minlength=keys.size)
    first = np.full(keys.size, -1, dtype=np.int64)
    first[inverse[::-1]] = rows[::-1]  # any one row per cell, for single-fence cells
    features = []
    for k in range(keys.size):
        props: dict[str, Any] = {"count": int(counts[k])}
        if counts[k] == 1:
            props["store_id"] = cols.store_id[int(first[k])]
        point = shapely.Point(sum_x[k] / counts[k] * EXTENT, sum_y[k] / counts[k] * EXTENT)
        features.append({"geometry": point, "properties": props})
    return _encode("clusters", features)


def _encode(layer: str, features: Sequence[dict[str, Any]]) -> bytes:
    data: bytes = mapbox_vector_tile.encode(
        [{"name": layer, "features": list(features)}],
        default_options={"extents": EXTENT, "y_coord_down": True},
    )
    return data


def _circle(lat: float, lng: float, radius_m: float, segments: int = 48) -> Any:
    """A circle on the sphere as a lng/lat polygon (points ``radius_m`` from the centre)."""
    p1, l1 = math.radians(lat), math.radians(lng)
    d = radius_m / EARTH_RADIUS_M
    b = np.linspace(0, 2 * math.pi, segments, endpoint=False)
    p2 = np.arcsin(math.sin(p1) * math.cos(d) + math.cos(p1) * math.sin(d) * np.cos(b))
    l2 = l1 + np.arctan2(
        np.sin(b) * math.sin(d) * math.cos(p1), math.cos(d) - math.sin(p1) * np.sin(p2)
    )
    # x = lng, y = lat (shapely); not wrapped, so a circle across ±180 stays in one piece.
    return shapely.Polygon(np.column_stack([np.degrees(l2), np.degrees(p2)]))


def _to_tile(geom: Any, z: int, x: int, y: int) -> Any:
    """A lng/lat geometry (x = lng) in this tile's coordinates (0..EXTENT, y down)."""
    n = float(1 << z)

    def project(xy: NDArray[np.float64]) -> NDArray[np.float64]:
        mx, my = _mercator(xy[:, 1], xy[:, 0])
        return np.column_stack([(mx * n - x) * EXTENT, (my * n - y) * EXTENT])

    return shapely.transform(geom, project)
