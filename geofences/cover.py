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

All cells are ints (``h3.api.basic_int``). An index is built in bulk (``circle_covers``,
``polygon_covers``): the same covers, with each H3 call made once per distinct argument and
the arithmetic in NumPy.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import cache
from itertools import chain, compress
from typing import Any, Final

import h3.api.basic_int as h3
import h3.api.numpy_int as h3np
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
_CHUNK: Final = 65_536
_EDGES_FINE_TO_COARSE: Final = np.array(EDGE_M[: MAX_RES + 1], dtype=np.float64)

# Bulk work calls h3's Cython layer (``h3._cy``, which every ``h3.api.*`` module wraps) when
# it is there: the int API adds a Python call and an argument conversion per cell, about a
# third of the cost of a cell centre. Same C functions, same results (tests compare them).
try:
    from h3 import _cy as _h3c

    _cell_to_latlng: Callable[[int], tuple[float, float]] = _h3c.cell_to_latlng
    _cell_to_boundary: Callable[[int], tuple[tuple[float, float], ...]] = _h3c.cell_to_boundary
    _latlng_to_cell: Callable[[float, float, int], int] = _h3c.latlng_to_cell
    _grid_disk_cells: Callable[[int, int], Any] = _h3c.grid_disk  # a uint64 buffer
except (ImportError, AttributeError):  # pragma: no cover - another h3 build
    _cell_to_latlng = h3.cell_to_latlng
    _cell_to_boundary = h3.cell_to_boundary
    _latlng_to_cell = h3.latlng_to_cell
    _grid_disk_cells = h3np.grid_disk


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
    flat = np.fromiter(chain.from_iterable(map(_cell_to_latlng, cells)), np.float64, count=2 * n)
    return flat[0::2], flat[1::2]


def cell_circumradii(cells: Sequence[int]) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Centres and exact circumradii (max centre-to-vertex distance, metres) of ``cells``."""
    lat, lng = cell_centres(cells)
    bounds = list(map(_cell_to_boundary, cells))
    counts = np.fromiter(map(len, bounds), dtype=np.int64, count=len(bounds))
    flat = chain.from_iterable(chain.from_iterable(bounds))
    verts = np.fromiter(flat, np.float64, count=2 * int(counts.sum())).reshape(-1, 2)
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

    The same cover as one circle at a time, computed in bulk: circles are sorted by centre
    cell so that each chunk holds neighbours, and every H3 call (centre cell, disk, cell
    centre, cell boundary) is made once per distinct argument in a chunk.

    Returns
    -------
    res : int8 array, the resolution of each circle
    cells, owners : parallel arrays, one row per (cell, circle index)
    """
    n = len(lats)
    res_all = resolutions_for_sizes(radii)
    c0 = np.fromiter(
        map(_latlng_to_cell, lats.tolist(), lngs.tolist(), res_all.tolist()),
        dtype=np.uint64,
        count=n,
    )
    # H3 ids of one resolution sort nearby cells together (hierarchical digits).
    order = np.argsort(c0, kind="stable")
    cells_out: list[NDArray[np.uint64]] = []
    owners_out: list[NDArray[np.int64]] = []
    for start in range(0, n, _CHUNK):
        sel = order[start : start + _CHUNK]
        cells, owners = _circle_chunk(lats[sel], lngs[sel], radii[sel], res_all[sel], c0[sel])
        cells_out.append(cells)
        owners_out.append(sel[owners])
    if not cells_out:
        return res_all, np.empty(0, np.uint64), np.empty(0, np.int64)
    return res_all, np.concatenate(cells_out), np.concatenate(owners_out)


def _first_of_runs(*keys: NDArray[Any]) -> NDArray[np.bool_]:
    """Mask of the rows that start a run of equal keys (rows sorted by the keys)."""
    first = np.ones(len(keys[0]), dtype=bool)
    if len(first) > 1:
        same = np.ones(len(first) - 1, dtype=bool)
        for k in keys:
            same &= k[1:] == k[:-1]
        first[1:] = ~same
    return first


def _circle_chunk(
    lats: FloatArray,
    lngs: FloatArray,
    radii: FloatArray,
    res: NDArray[np.int8],
    c0: NDArray[np.uint64],
) -> tuple[NDArray[np.uint64], NDArray[np.int64]]:
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

    # One grid_disk per distinct (centre cell, k) among the fast circles.
    fast = np.flatnonzero(~slow)
    by_pair = fast[np.lexsort((k_all[fast], c0[fast]))]
    first = _first_of_runs(c0[by_pair], k_all[by_pair])
    pair_of = np.cumsum(first) - 1  # pair number of each circle in by_pair
    pc, pk = c0[by_pair[first]], k_all[by_pair[first]]
    disks = list(map(_grid_disk_cells, pc.tolist(), pk.tolist()))
    psize = np.fromiter(map(len, disks), dtype=np.int64, count=len(disks))
    # A pentagon inside after all: those circles take the exact flood below.
    whole = psize == 3 * pk * (pk + 1) + 1
    slow[by_pair[~whole[pair_of]]] = True
    keep_rows = whole[pair_of]
    by_pair, pair_of = by_pair[keep_rows], pair_of[keep_rows]
    psize = np.where(whole, psize, 0)
    pstart = np.cumsum(psize) - psize
    # The disks are uint64 buffers: one join, no Python int per cell.
    pcells = np.frombuffer(b"".join(compress(disks, whole.tolist())), dtype=np.uint64)
    del disks
    # Each distinct candidate cell's centre is computed once.
    ucand, cinv_p = np.unique(pcells, return_inverse=True)
    clat, clng = cell_centres(ucand.tolist())
    # Expand (circle, pair) to one row per (circle, candidate cell).
    fsize = psize[pair_of]
    owner = np.repeat(by_pair, fsize)
    row0 = np.repeat(np.cumsum(fsize) - fsize, fsize)
    pos = np.arange(len(owner), dtype=np.int64) - row0 + np.repeat(pstart[pair_of], fsize)
    cinv = cinv_p[pos]
    d = haversine_m(lats[owner], lngs[owner], clat[cinv], clng[cinv])
    keep = d <= reach[owner]
    cells_parts = [ucand[cinv[keep]]]
    owner_parts = [owner[keep]]

    lat_l, lng_l, res_l = lats.tolist(), lngs.tolist(), res.tolist()
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
            return _cap_boxes_intersect(geom, *cell_circumradii(cells))

        try:
            return res, flood_cover(seeds, may_meet)
        except OverflowError:
            if res == 0:
                raise
            res -= 1


def polygon_covers(
    geoms: Sequence[BaseGeometry],
) -> tuple[NDArray[np.int8], NDArray[np.uint64], NDArray[np.int64]]:
    """Covers of many polygons at once: for each, the cover :func:`polygon_cover` gives.

    All floods advance one ring per step together, so the H3 and shapely work of a step is
    one vectorized call over every polygon (a cell's test does not depend on the order the
    cells are reached in, so the covers are the same). A polygon whose flood grows past
    ``MAX_FLOOD_CELLS`` is redone alone by :func:`polygon_cover`, one resolution coarser.

    Returns
    -------
    res : int8 array, the resolution of each polygon
    cells, owners : parallel arrays, one row per (cell, polygon index)
    """
    n = len(geoms)
    garr = np.empty(n, dtype=object)
    garr[:] = list(geoms)
    shapely.prepare(garr)
    res = resolutions_for_sizes(np.fromiter(map(polygon_size_m, geoms), dtype=np.float64, count=n))
    coords, idx = shapely.get_coordinates(garr, return_index=True)  # columns x = lng, y = lat
    seed_cells = map(
        _latlng_to_cell, coords[:, 1].tolist(), coords[:, 0].tolist(), res[idx].tolist()
    )
    seen: list[set[int]] = [set() for _ in range(n)]
    f_owner: list[int] = []
    f_cell: list[int] = []
    for o, c in zip(idx.tolist(), seed_cells, strict=True):
        if c not in seen[o]:
            seen[o].add(c)
            f_owner.append(o)
            f_cell.append(c)
    cells_parts = [np.array(f_cell, dtype=np.uint64)]
    owner_parts = [np.array(f_owner, dtype=np.int64)]
    overflow = np.zeros(n, dtype=bool)
    while f_cell:
        fresh_owner: list[int] = []
        fresh_cell: list[int] = []
        for o, c in zip(f_owner, f_cell, strict=True):
            s = seen[o]
            for nb in h3.grid_disk(c, 1):
                if nb not in s:
                    s.add(nb)
                    fresh_owner.append(o)
                    fresh_cell.append(nb)
        if not fresh_cell:
            break
        owners = np.array(fresh_owner, dtype=np.int64)
        for o in np.unique(owners).tolist():
            if len(seen[o]) > MAX_FLOOD_CELLS:
                overflow[o] = True
                seen[o] = set()  # free it; this polygon is redone alone
        live = ~overflow[owners]
        owners = owners[live]
        cells = np.array(fresh_cell, dtype=np.uint64)[live]
        ucells, inv = np.unique(cells, return_inverse=True)
        lat, lng, rad = cell_circumradii(ucells.tolist())
        keep = _cap_boxes_intersect(garr[owners], lat[inv], lng[inv], rad[inv])
        cells_parts.append(cells[keep])
        owner_parts.append(owners[keep])
        f_owner = owners[keep].tolist()
        f_cell = cells[keep].tolist()
    cells = np.concatenate(cells_parts)
    owners = np.concatenate(owner_parts)
    if overflow.any():
        live = ~overflow[owners]
        cells_parts, owner_parts = [cells[live]], [owners[live]]
        for o in np.flatnonzero(overflow).tolist():
            if res[o] == 0:
                raise OverflowError("flood fill too large for this resolution")
            r, pcells = polygon_cover(geoms[o], int(res[o]) - 1)
            res[o] = r
            cells_parts.append(np.array(pcells, dtype=np.uint64))
            owner_parts.append(np.full(len(pcells), o, dtype=np.int64))
        cells, owners = np.concatenate(cells_parts), np.concatenate(owner_parts)
    return res, cells, owners


def _cap_boxes_intersect(
    geom: BaseGeometry | NDArray[np.object_], lat: FloatArray, lng: FloatArray, rad: FloatArray
) -> NDArray[np.bool_]:
    """Whether the lng/lat box around each cell's bounding cap meets ``geom`` (one geometry,
    or one per cell); cells given by centre and circumradius."""
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
    idx = np.arange(len(lat))
    west = lo < -180.0  # wraps past -180: the rest reappears just below +180
    east = hi > 180.0
    owner = np.concatenate((idx, idx[west], idx[east]))
    xmin = np.concatenate((np.maximum(lo, -180.0), lo[west] + 360.0, np.full(east.sum(), -180.0)))
    xmax = np.concatenate((np.minimum(hi, 180.0), np.full(west.sum(), 180.0), hi[east] - 360.0))
    ymin = np.concatenate((lat_lo, lat_lo[west], lat_lo[east]))
    ymax = np.concatenate((lat_hi, lat_hi[west], lat_hi[east]))
    g = geom[owner] if isinstance(geom, np.ndarray) else geom
    # Only boxes that meet the geometry's own bounding box can meet it (GEOS tests the same
    # first): building the other boxes would cost most of the time.
    gb = shapely.bounds(g)  # columns: min lng, min lat, max lng, max lat
    near = (xmin <= gb[..., 2]) & (xmax >= gb[..., 0]) & (ymin <= gb[..., 3]) & (ymax >= gb[..., 1])
    if isinstance(g, np.ndarray):
        g = g[near]
    hits = np.zeros(len(owner), dtype=bool)
    box = shapely.box(xmin[near], ymin[near], xmax[near], ymax[near])  # x = lng, y = lat
    hits[near] = shapely.intersects(g, box)
    out = np.zeros(len(lat), dtype=bool)
    np.logical_or.at(out, owner, hits)
    return out
