"""The bulk covers (all circles / all polygons of an index at once) against one-at-a-time rules.

``circle_covers`` sorts circles by centre cell, makes one ``grid_disk`` per distinct
(centre cell, k) and one ``cell_to_latlng`` per distinct candidate cell; ``polygon_covers``
runs every flood fill in lock step. Neither may change a cover: each is compared here with
a plain per-fence implementation of the same rule (the code before the bulk versions).
"""

from __future__ import annotations

import math
import random

import h3.api.basic_int as h3
import numpy as np
import pytest
import shapely
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import geofences.cover as cover
from geofences.cover import (
    EDGE_M,
    FAST_MIN_RES,
    NEIGHBOUR_SIZE_SAFETY,
    PENTAGON_REACH_EDGES,
    RING_SPACING,
    SLACK_M,
    cell_circumradii,
    circle_covers,
    flood_cover,
    haversine_m,
    polygon_cover,
    polygon_covers,
    resolution_for_size,
)
from geofences.fences import CircleFence
from geofences.index import FenceIndex
from geofences.model import FenceRecord
from tests.geofences.test_cover import centres, destination, radii

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _arr(x: float) -> np.ndarray:
    return np.array([x], dtype=np.float64)


def reference_circle_cover(lat: float, lng: float, radius_m: float) -> tuple[int, set[int]]:
    """One circle, one H3 call at a time: the per-fence rule of geofences.cover."""
    res = resolution_for_size(radius_m)
    c0 = h3.latlng_to_cell(lat, lng, res)
    clat, clng, crad = cell_circumradii([c0])
    r0 = float(crad[0])
    reach = radius_m + NEIGHBOUR_SIZE_SAFETY * r0 + SLACK_M
    off = float(haversine_m(_arr(lat), _arr(lng), clat, clng)[0])
    plat, plng = cover._pentagon_centres(res)
    to_pent = haversine_m(np.full(12, lat), np.full(12, lng), plat, plng).min()
    slow = res < FAST_MIN_RES or to_pent <= radius_m + PENTAGON_REACH_EDGES * EDGE_M[res]
    k = max(1, math.floor((reach + off + SLACK_M) / (RING_SPACING * r0)))
    if not slow:
        disk = h3.grid_disk(c0, k)
        if len(disk) == 3 * k * (k + 1) + 1:
            keep = set()
            for cell in disk:
                dlat, dlng = h3.cell_to_latlng(cell)
                d = float(haversine_m(_arr(lat), _arr(lng), _arr(dlat), _arr(dlng))[0])
                if d <= reach:
                    keep.add(cell)
            return res, keep

    def may_meet(cells: list[int]) -> np.ndarray:
        mlat, mlng, mrad = cell_circumradii(cells)
        d = haversine_m(np.full(len(cells), lat), np.full(len(cells), lng), mlat, mlng)
        return d <= radius_m + cover.CELL_CAP_SAFETY * mrad + SLACK_M

    return res, set(flood_cover([c0], may_meet))


def _per_owner(cells: np.ndarray, owners: np.ndarray, n: int) -> list[set[int]]:
    out: list[set[int]] = [set() for _ in range(n)]
    for c, o in zip(cells.tolist(), owners.tolist(), strict=True):
        assert c not in out[o], "a cell listed twice for one fence"
        out[o].add(c)
    return out


def _check_circles(lats: list[float], lngs: list[float], rads: list[float]) -> None:
    res, cells, owners = circle_covers(np.array(lats), np.array(lngs), np.array(rads))
    got = _per_owner(cells, owners, len(lats))
    for i in range(len(lats)):
        r, want = reference_circle_cover(lats[i], lngs[i], rads[i])
        assert res[i] == r
        assert got[i] == want, (lats[i], lngs[i], rads[i])


@SETTINGS
@given(
    circles=st.lists(st.tuples(centres, radii), min_size=1, max_size=25),
    twins=st.integers(0, 5),
    seed=st.integers(0, 2**32),
)
def test_bulk_circle_covers_equal_one_at_a_time(
    circles: list[tuple[tuple[float, float], float]], twins: int, seed: int
) -> None:
    rnd = random.Random(seed)
    lats = [c[0][0] for c in circles]
    lngs = [c[0][1] for c in circles]
    rads = [c[1] for c in circles]
    # Neighbours that share a centre cell with another circle (one disk for several) but
    # maybe not its k: a tiny step from an existing centre, any radius.
    for _ in range(twins):
        j = rnd.randrange(len(circles))
        lat, lng = destination(lats[j], lngs[j], rnd.uniform(0, 360), rnd.uniform(0, 3))
        lats.append(lat)
        lngs.append(lng)
        rads.append(rnd.choice([rads[j], 10.0, 45.72, 100.0, 1000.0, 10_000.0]))
    _check_circles(lats, lngs, rads)


def test_bulk_circle_covers_across_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    # Small chunks: circles of one chunk share centre cells with circles of the next.
    monkeypatch.setattr(cover, "_CHUNK", 64)
    rng = np.random.default_rng(11)
    n = 600
    base_lat, base_lng = rng.uniform(-60, 60, 6), rng.uniform(-180, 180, 6)
    city = rng.integers(0, 6, n)
    lats = base_lat[city] + rng.normal(0, 0.01, n)
    lngs = base_lng[city] + rng.normal(0, 0.01, n)
    rads = rng.choice([10.0, 45.72, 100.0, 1000.0], n)
    lats[:5] = [89.99, -89.99, 0.0, 12.0, 45.0]  # pole, pole, ...
    lngs[:5] = [0.0, 180.0, 180.0, -179.9999, 179.9999]  # ... and the antimeridian
    _check_circles(lats.tolist(), lngs.tolist(), rads.tolist())


@pytest.mark.parametrize("res", [4, 7, 10])
def test_bulk_circle_covers_near_pentagons(res: int) -> None:
    rnd = random.Random(res)
    lats, lngs, rads = [], [], []
    for p in h3.get_pentagons(res):
        plat, plng = h3.cell_to_latlng(p)
        for _ in range(4):
            off = rnd.uniform(0, 60) * EDGE_M[res]  # in and beyond the pentagon's reach
            lat, lng = destination(plat, plng, rnd.uniform(0, 360), off)
            lats.append(lat)
            lngs.append(lng)
            rads.append(rnd.uniform(0.5, 1.0) * EDGE_M[res])
    _check_circles(lats, lngs, rads)


def test_bulk_circle_covers_empty() -> None:
    res, cells, owners = circle_covers(np.empty(0), np.empty(0), np.empty(0))
    assert len(res) == len(cells) == len(owners) == 0


def _random_polygon(rnd: random.Random) -> shapely.Polygon | shapely.MultiPolygon:
    kind = rnd.random()
    lat = rnd.choice([rnd.uniform(-70, 70), rnd.uniform(84, 89.5), -rnd.uniform(84, 89.5)])
    lng = rnd.uniform(-179.99, 179.99)
    size = rnd.choice([0.0003, 0.002, 0.02, 0.3])
    if kind < 0.15:  # two parts either side of the antimeridian
        return shapely.MultiPolygon(
            [
                shapely.box(179.99 - size, lat, 180.0, lat + size),
                shapely.box(-180.0, lat, -179.99 + size, lat + size),
            ]
        )
    pts = []
    for a in sorted(rnd.uniform(0, 2 * math.pi) for _ in range(5)):
        f = rnd.uniform(0.3, 1.0)
        pts.append(
            (lng + size * f * math.cos(a), max(-90.0, min(90.0, lat + size * f * math.sin(a))))
        )
    poly = shapely.Polygon(pts)  # x = lng, y = lat
    return (
        poly if poly.is_valid and poly.area > 0 else shapely.box(lng, lat, lng + size, lat + size)
    )


def test_bulk_polygon_covers_equal_one_at_a_time() -> None:
    rnd = random.Random(4)
    geoms = [_random_polygon(rnd) for _ in range(120)]
    geoms.append(shapely.box(-180.0, 88.0, 180.0, 90.0))  # polar cap
    geoms.append(geoms[3])  # the same geometry twice
    res, cells, owners = polygon_covers(geoms)
    got = _per_owner(cells, owners, len(geoms))
    for i, g in enumerate(geoms):
        r, want = polygon_cover(g)
        assert res[i] == r and got[i] == set(want), i


def test_bulk_polygon_covers_retry_coarser(monkeypatch: pytest.MonkeyPatch) -> None:
    # With a tiny flood limit the larger polygons overflow and are redone one level coarser.
    monkeypatch.setattr(cover, "MAX_FLOOD_CELLS", 12)
    rnd = random.Random(9)
    geoms = [_random_polygon(rnd) for _ in range(40)]
    res, cells, owners = polygon_covers(geoms)
    got = _per_owner(cells, owners, len(geoms))
    retried = 0
    for i, g in enumerate(geoms):
        r, want = polygon_cover(g)
        retried += r < resolution_for_size(cover.polygon_size_m(g))
        assert res[i] == r and got[i] == set(want), i
    assert retried > 0


def test_bulk_polygon_covers_empty() -> None:
    res, cells, owners = polygon_covers([])
    assert len(res) == len(cells) == len(owners) == 0


def test_index_matches_brute_force_on_mixed_fences() -> None:
    # Circles and polygons mixed in one build: the owners of both bulk covers map back to
    # the right fences (every fence covering a ping is found, nothing else).
    rnd = random.Random(21)
    recs = []
    for i in range(400):
        lat, lng = rnd.uniform(40.0, 40.05), rnd.uniform(-74.05, -74.0)
        if i % 5 == 0:
            half = rnd.uniform(0.0002, 0.002)
            geo = shapely.geometry.mapping(
                shapely.box(lng - half, lat - half, lng + half, lat + half)
            )
            recs.append(FenceRecord(f"p{i}", "", lat, lng, geometry=dict(geo)))
        else:
            r = rnd.choice([10.0, 45.72, 100.0, 1000.0])
            recs.append(FenceRecord(f"c{i}", "", lat, lng, radius_m=r))
    rnd.shuffle(recs)
    index = FenceIndex.build(recs)
    fences = list(index)
    for _ in range(3000):
        lat, lng = rnd.uniform(39.99, 40.06), rnd.uniform(-74.06, -73.99)
        want = {f.store_id for f in fences if f.covers(lat, lng)}
        got = index.match(lat, lng)
        assert {m.fence.store_id for m in got} == want
        for m in got:
            assert m.distance_m == m.fence.distance_m(lat, lng)
            assert index.get(m.fence.store_id) is m.fence
    assert all(isinstance(index.get(r.store_id), CircleFence) == (r.geometry is None) for r in recs)


def test_fast_h3_calls_agree_with_the_public_api() -> None:
    # cover.py calls h3's Cython layer directly for bulk work: same answers as h3.api.
    rnd = random.Random(2)
    cells = [p for r in (4, 7, 10) for p in h3.get_pentagons(r)]
    for _ in range(300):
        lat, lng, res = rnd.uniform(-90, 90), rnd.uniform(-180, 180), rnd.randrange(16)
        assert cover._latlng_to_cell(lat, lng, res) == h3.latlng_to_cell(lat, lng, res)
        cells.append(h3.latlng_to_cell(lat, lng, res))
    for c in cells:
        assert tuple(cover._cell_to_latlng(c)) == h3.cell_to_latlng(c)
        assert tuple(map(tuple, cover._cell_to_boundary(c))) == h3.cell_to_boundary(c)
        for k in (1, 2, 3):
            disk = np.frombuffer(b"".join([cover._grid_disk_cells(c, k)]), dtype=np.uint64)
            assert sorted(disk.tolist()) == sorted(h3.grid_disk(c, k))
    lat, lng = cover.cell_centres(cells)
    assert list(zip(lat.tolist(), lng.tolist(), strict=True)) == [
        h3.cell_to_latlng(c) for c in cells
    ]
