"""H3 covers of fences: every cell that can hold a point of a fence, at one resolution each.

The index finds a fence from a ping through ``latlng_to_cell(lat, lng, res)``, so a cover
must hold the cell of *every* covered point; extra cells only cost memory. Both methods
below keep a cell unless it provably cannot meet the fence:

* circles (away from the 12 pentagons): ``grid_disk(centre cell, k)`` with ``k`` from the
  radius and the local cell size, pruned to cells whose centre is within
  ``radius + 1.15 * local circumradius + 1 m`` of the circle centre;
* polygons, and circles near a pentagon or at coarse resolutions: a flood fill that starts
  from cells known to meet the fence and walks to neighbours while their bounding cap
  (exact circumradius of that cell * 1.1 + 1 m) may still meet it.

All cells use the int API (``h3.api.basic_int``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import cache
from typing import Final

import h3.api.basic_int as h3
import numpy as np
import shapely
from numpy.typing import NDArray
from shapely.geometry.base import BaseGeometry

from geofences.sphere import EARTH_RADIUS_M

FloatArray = NDArray[np.float64]

#: Finest resolution used: 10 (edge ~76 m) already gives a 10 m circle 1-4 cells; finer
#: resolutions would add a ``latlng_to_cell`` per ping for little gain.
MAX_RES: Final = 10
#: Average hexagon edge (= circumradius) per resolution, metres.
EDGE_M: Final = tuple(h3.average_hexagon_edge_length(r, "m") for r in range(16))
#: A fence of radius (or half extent) s uses the finest res with s <= RATIO * edge: the
#: cover then stays at about 3-8 cells (45.72 m -> res 10, 100 m -> 9, 1 km -> 7, 10 km -> 4).
SIZE_RATIO: Final = 1.0
#: Safety on a cell's exact circumradius: the cell's points lie within it of its centre
#: (cells are geodesically convex; the factor absorbs face-edge distortion vertices).
CELL_CAP_SAFETY: Final = 1.1
#: Fast path: neighbours within a few rings are at most 1.031x the centre cell's
#: circumradius away from pentagons (measured over the globe, res 4-11); we allow 1.15x.
NEIGHBOUR_SIZE_SAFETY: Final = 1.15
#: Fast path: a cell j rings out has its centre >= 1.22 * j * R0 away (measured); we use 1.1.
RING_SPACING: Final = 1.1
#: Absolute slack for rounding in the numpy (haversine) distances used only for pruning.
SLACK_M: Final = 1.0
#: Within this many average edges (plus the radius) of a pentagon, cell sizes change fast
#: (up to 1.28x within 3 rings): such circles take the flood fill with exact sizes.
PENTAGON_REACH_EDGES: Final = 30.0
#: The fast path is used from this resolution on; coarser cells vary too much over a disk.
FAST_MIN_RES: Final = 4
#: A flood fill visiting more cells than this retries one resolution coarser.
MAX_FLOOD_CELLS: Final = 50_000
_CHUNK: Final = 16_384
_EDGES_FINE_TO_COARSE: Final = np.array(EDGE_M[: MAX_RES + 1], dtype=np.float64)


def resolution_for_size(size_m: float) -> int:
    """Finest resolution (<= MAX_RES) whose average edge is at least ``size_m / SIZE_RATIO``.

    >>> resolution_for_size(45.72), resolution_for_size(1000.0), resolution_for_size(10_000.0)
    (10, 7, 4)
    """
    return int(resolutions_for_sizes(np.array([size_m], dtype=np.float64))[0])


def resolutions_for_sizes(sizes_m: FloatArray) -> NDArray[np.int8]:
    """Vectorized :func:`resolution_for_size`."""
    # Edges shrink with the resolution, so the resolutions that fit are 0..m: count them.
    fits = sizes_m[:, None] <= SIZE_RATIO * _EDGES_FINE_TO_COARSE[None, :]
    res: NDArray[np.int8] = np.maximum(fits.sum(axis=1) - 1, 0).astype(np.int8)
    return res


def haversine_m(
    lat1: FloatArray, lng1: FloatArray, lat2: FloatArray, lng2: FloatArray
) -> FloatArray:
    """Great-circle distance in metres, numpy (for pruning only: not bit-exact with PostGIS)."""
    p1, p2 = np.radians(lat1), np.radians(lat2)
    s_dlat = np.sin((p2 - p1) * 0.5)
    s_dlng = np.sin(np.radians(lng2 - lng1) * 0.5)
    a = s_dlat * s_dlat + np.cos(p1) * np.cos(p2) * s_dlng * s_dlng
    d: FloatArray = 2.0 * EARTH_RADIUS_M * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))
    return d


def cell_centres(cells: Sequence[int]) -> tuple[FloatArray, FloatArray]:
    """Centre latitudes and longitudes of ``cells``."""
    n = len(cells)
    out = np.fromiter(
        (v for c in cells for v in h3.cell_to_latlng(c)), dtype=np.float64, count=2 * n
    ).reshape(n, 2)
    return out[:, 0], out[:, 1]


def cell_circumradii(cells: Sequence[int]) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Centres and exact circumradii (max centre-to-vertex distance, metres) of ``cells``."""
    lat, lng = cell_centres(cells)
    bounds = [h3.cell_to_boundary(c) for c in cells]
    counts = np.fromiter((len(b) for b in bounds), dtype=np.int64, count=len(bounds))
    verts = np.array([v for b in bounds for v in b], dtype=np.float64).reshape(-1, 2)
    owner = np.repeat(np.arange(len(cells)), counts)
    d = haversine_m(lat[owner], lng[owner], verts[:, 0], verts[:, 1])
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    return lat, lng, np.maximum.reduceat(d, starts)


@cache
def _pentagon_centres(res: int) -> tuple[FloatArray, FloatArray]:
    return cell_centres(h3.get_pentagons(res))


def flood_cover(
    seeds: Sequence[int], may_meet: Callable[[list[int]], NDArray[np.bool_]]
) -> list[int]:
    """Cells reached from ``seeds`` through neighbours for which ``may_meet`` is true.

    Why it cannot miss: the cells that meet a connected region form a connected set under
    H3 adjacency (cells touching at a point share an edge), so when ``seeds`` hold one such
    cell per connected part and ``may_meet`` is true for every cell that meets the region,
    the walk reaches them all. Raises OverflowError past ``MAX_FLOOD_CELLS`` cells.
    """
    cover = set(seeds)
    seen = set(seeds)
    frontier = list(cover)
    while frontier:
        fresh: list[int] = []
        for cell in frontier:
            for n in h3.grid_disk(cell, 1):
                if n not in seen:
                    seen.add(n)
                    fresh.append(n)
        if len(seen) > MAX_FLOOD_CELLS:
            raise OverflowError("flood fill too large for this resolution")
        if not fresh:
            break
        keep = may_meet(fresh)
        frontier = [c for c, k in zip(fresh, keep.tolist(), strict=True) if k]
        cover.update(frontier)
    return sorted(cover)


def _circle_flood(lat: float, lng: float, radius_m: float, res: int) -> list[int]:
    def may_meet(cells: list[int]) -> NDArray[np.bool_]:
        clat, clng, rad = cell_circumradii(cells)
        d = haversine_m(np.full(len(cells), lat), np.full(len(cells), lng), clat, clng)
        return d <= radius_m + CELL_CAP_SAFETY * rad + SLACK_M

    return flood_cover([h3.latlng_to_cell(lat, lng, res)], may_meet)


def circle_cover(lat: float, lng: float, radius_m: float) -> tuple[int, list[int]]:
    """Resolution and sorted cells covering the circle (see :func:`circle_covers`).

    >>> res, cells = circle_cover(40.0, -74.0, 45.72)
    >>> res, h3.latlng_to_cell(40.0003, -74.0, res) in cells
    (10, True)
    """
    res, cells, _ = circle_covers(
        np.array([lat], dtype=np.float64),
        np.array([lng], dtype=np.float64),
        np.array([radius_m], dtype=np.float64),
    )
    return int(res[0]), sorted(cells.tolist())


def circle_covers(
    lats: FloatArray, lngs: FloatArray, radii: FloatArray
) -> tuple[NDArray[np.int8], NDArray[np.uint64], NDArray[np.int64]]:
    """Covers of many circles at once.

    Returns
    -------
    res : int8 array, the resolution of each circle
    cells, owners : parallel arrays, one row per (cell, circle index)
    """
    res_all = resolutions_for_sizes(radii)
    cells_out: list[NDArray[np.uint64]] = []
    owners_out: list[NDArray[np.int64]] = []
    for start in range(0, len(lats), _CHUNK):
        stop = min(start + _CHUNK, len(lats))
        cells, owners = _circle_chunk(
            lats[start:stop], lngs[start:stop], radii[start:stop], res_all[start:stop]
        )
        cells_out.append(cells)
        owners_out.append(owners + start)
    if not cells_out:
        return res_all, np.empty(0, np.uint64), np.empty(0, np.int64)
    return res_all, np.concatenate(cells_out), np.concatenate(owners_out)


def _circle_chunk(
    lats: FloatArray, lngs: FloatArray, radii: FloatArray, res: NDArray[np.int8]
) -> tuple[NDArray[np.uint64], NDArray[np.int64]]:
    n = len(lats)
    lat_l, lng_l, res_l = lats.tolist(), lngs.tolist(), res.tolist()
    c0 = np.fromiter(
        (h3.latlng_to_cell(a, b, r) for a, b, r in zip(lat_l, lng_l, res_l, strict=True)),
        dtype=np.uint64,
        count=n,
    )
    # Clustered stores share centre cells: measure each distinct cell once.
    uniq, inv = np.unique(c0, return_inverse=True)
    ulat, ulng, urad = cell_circumradii(uniq.tolist())
    r0 = urad[inv]
    reach = radii + NEIGHBOUR_SIZE_SAFETY * r0 + SLACK_M
    off = haversine_m(lats, lngs, ulat[inv], ulng[inv])  # circle centre to c0's centre

    slow = res < FAST_MIN_RES
    for r in np.unique(res).tolist():
        sel = np.flatnonzero(res == r)
        plat, plng = _pentagon_centres(r)
        d = haversine_m(lats[sel, None], lngs[sel, None], plat[None, :], plng[None, :])
        slow[sel] |= d.min(axis=1) <= radii[sel] + PENTAGON_REACH_EDGES * EDGE_M[r]

    # A cell j rings out has its centre >= RING_SPACING * j * r0 from c0's centre, so at
    # least that minus ``off`` from the circle centre: beyond k it can never pass the prune.
    k_all = np.maximum(1, np.floor((reach + off + SLACK_M) / (RING_SPACING * r0))).astype(np.int64)
    disk_cells: list[int] = []
    disk_sizes = np.zeros(n, dtype=np.int64)
    c0_l, k_l = c0.tolist(), k_all.tolist()
    for i in np.flatnonzero(~slow).tolist():
        disk = h3.grid_disk(c0_l[i], k_l[i])
        k = k_l[i]
        if len(disk) != 3 * k * (k + 1) + 1:  # a pentagon inside after all: be exact
            slow[i] = True
            continue
        disk_cells.extend(disk)
        disk_sizes[i] = len(disk)

    cand = np.array(disk_cells, dtype=np.uint64)
    owner = np.repeat(np.arange(n, dtype=np.int64), disk_sizes)
    ucand, cinv = np.unique(cand, return_inverse=True)
    clat, clng = cell_centres(ucand.tolist())
    d = haversine_m(lats[owner], lngs[owner], clat[cinv], clng[cinv])
    keep = d <= reach[owner]
    cells_parts = [cand[keep]]
    owner_parts = [owner[keep]]

    for i in np.flatnonzero(slow).tolist():
        flood = _circle_flood(lat_l[i], lng_l[i], float(radii[i]), res_l[i])
        cells_parts.append(np.array(flood, dtype=np.uint64))
        owner_parts.append(np.full(len(flood), i, dtype=np.int64))
    return np.concatenate(cells_parts), np.concatenate(owner_parts)


def polygon_size_m(geom: BaseGeometry) -> float:
    """Half the largest part's bounding-box diagonal in metres (x = lng, y = lat)."""
    m_per_deg = EARTH_RADIUS_M * math.pi / 180.0
    size = 0.0
    for part in shapely.get_parts(geom):
        lng_lo, lat_lo, lng_hi, lat_hi = part.bounds  # shapely bounds: (minx, miny, maxx, maxy)
        # The widest parallel in the box sets the east-west extent (the box is in the
        # lng/lat plane: a GeoJSON polygon never wraps, parts split at +-180 stay apart).
        widest = 0.0 if lat_lo <= 0.0 <= lat_hi else min(abs(lat_lo), abs(lat_hi))
        w = (lng_hi - lng_lo) * m_per_deg * math.cos(math.radians(widest))
        h = (lat_hi - lat_lo) * m_per_deg
        size = max(size, 0.5 * math.hypot(w, h))
    return size


def polygon_cover(geom: BaseGeometry, res: int | None = None) -> tuple[int, list[int]]:
    """Resolution and sorted cells covering a (Multi)Polygon drawn in the lng/lat plane.

    Seeds are the cells of every vertex (vertices are covered, so their cells meet the
    polygon, and every part has some); a cell may meet the polygon when the lng/lat box
    around its bounding cap intersects it (boxes split at +-180, whole parallels near a pole).

    >>> sq = shapely.box(0.0, 0.0, 0.001, 0.001)  # x = lng, y = lat
    >>> res, cells = polygon_cover(sq)
    >>> res, h3.latlng_to_cell(0.0005, 0.0005, res) in cells
    (9, True)
    """
    shapely.prepare(geom)
    if res is None:
        res = resolution_for_size(polygon_size_m(geom))
    coords = shapely.get_coordinates(geom)  # columns x = lng, y = lat
    while True:
        seeds = sorted({h3.latlng_to_cell(float(y), float(x), res) for x, y in coords})

        def may_meet(cells: list[int]) -> NDArray[np.bool_]:
            return _cap_boxes_intersect(geom, cells)

        try:
            return res, flood_cover(seeds, may_meet)
        except OverflowError:
            if res == 0:
                raise
            res -= 1


def _cap_boxes_intersect(geom: BaseGeometry, cells: list[int]) -> NDArray[np.bool_]:
    lat, lng, rad = cell_circumradii(cells)
    rho = (CELL_CAP_SAFETY * rad + SLACK_M) / EARTH_RADIUS_M  # cap radius, radians
    dlat = np.degrees(rho) + 1e-9
    lat_lo, lat_hi = lat - dlat, lat + dlat
    # A cap off the poles spans asin(sin(rho) / cos(lat)) of longitude either side.
    ratio = np.sin(rho) / np.maximum(np.cos(np.radians(lat)), 1e-300)
    full = (lat_hi >= 90.0) | (lat_lo <= -90.0) | (ratio >= 1.0)
    dlng = np.degrees(np.arcsin(np.minimum(ratio, 1.0))) + 1e-9
    full |= dlng >= 180.0
    lo = np.where(full, -180.0, lng - dlng)
    hi = np.where(full, 180.0, lng + dlng)
    lat_lo, lat_hi = np.maximum(lat_lo, -90.0), np.minimum(lat_hi, 90.0)
    idx = np.arange(len(cells))
    west = lo < -180.0  # wraps past -180: the rest reappears just below +180
    east = hi > 180.0
    owner = np.concatenate((idx, idx[west], idx[east]))
    xmin = np.concatenate((np.maximum(lo, -180.0), lo[west] + 360.0, np.full(east.sum(), -180.0)))
    xmax = np.concatenate((np.minimum(hi, 180.0), np.full(west.sum(), 180.0), hi[east] - 360.0))
    ymin = np.concatenate((lat_lo, lat_lo[west], lat_lo[east]))
    ymax = np.concatenate((lat_hi, lat_hi[west], lat_hi[east]))
    hits = shapely.intersects(geom, shapely.box(xmin, ymin, xmax, ymax))  # x = lng, y = lat
    out = np.zeros(len(cells), dtype=bool)
    np.logical_or.at(out, owner, hits)
    return out
