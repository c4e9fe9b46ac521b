"""Property tests: the H3 cover never loses a point that the exact fence covers."""

from __future__ import annotations

import math
import random
from typing import Any

import h3.api.basic_int as h3
import numpy as np
import pytest
import shapely
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from shapely.geometry import mapping

from geofences.cover import circle_cover, circle_covers, polygon_cover, resolution_for_size
from geofences.fences import CircleFence, PolygonFence
from geofences.index import FenceIndex
from geofences.model import FenceRecord
from geofences.sphere import EARTH_RADIUS_M

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def destination(lat: float, lng: float, bearing_deg: float, dist_m: float) -> tuple[float, float]:
    """Point ``dist_m`` from (lat, lng) along ``bearing_deg`` on the sphere."""
    p1, l1, th = math.radians(lat), math.radians(lng), math.radians(bearing_deg)
    dl = dist_m / EARTH_RADIUS_M
    p2 = math.asin(
        max(
            -1.0, min(1.0, math.sin(p1) * math.cos(dl) + math.cos(p1) * math.sin(dl) * math.cos(th))
        )
    )
    l2 = l1 + math.atan2(
        math.sin(th) * math.sin(dl) * math.cos(p1), math.cos(dl) - math.sin(p1) * math.sin(p2)
    )
    lng2 = (math.degrees(l2) + 180.0) % 360.0 - 180.0
    return math.degrees(p2), lng2


def _pentagon_point(res: int, which: int, offset: float, bearing: float) -> tuple[float, float]:
    lat, lng = h3.cell_to_latlng(h3.get_pentagons(res)[which % 12])
    return destination(lat, lng, bearing, offset * h3.average_hexagon_edge_length(res, "m"))


radii = st.one_of(
    st.sampled_from([10.0, 45.72, 100.0, 1000.0, 10_000.0]),
    st.floats(10.0, 10_000.0),
    st.floats(1.0, 4.0).map(lambda e: 10.0**e),
)
plain_centres = st.tuples(st.floats(-90.0, 90.0), st.floats(-180.0, 180.0))
polar_centres = st.tuples(
    st.floats(85.0, 90.0).flatmap(lambda a: st.sampled_from([a, -a])), st.floats(-180.0, 180.0)
)
antimeridian_centres = st.tuples(
    st.floats(-89.0, 89.0), st.floats(179.0, 180.0).flatmap(lambda a: st.sampled_from([a, -a]))
)
pentagon_centres = st.builds(
    _pentagon_point,
    st.integers(4, 10),
    st.integers(0, 11),
    st.floats(0.0, 6.0),
    st.floats(0.0, 360.0),
)
centres = st.one_of(plain_centres, polar_centres, antimeridian_centres, pentagon_centres)


def _inside_points(fence: CircleFence, seed: int, n: int = 60) -> list[tuple[float, float]]:
    rnd = random.Random(seed)
    r = fence.radius_m
    pts = [(fence.lat, fence.lng)]
    for _ in range(n):
        # Half the points hug the edge, where a missing cell would show first.
        frac = 1.0 - rnd.random() ** 4 * 0.01 if rnd.random() < 0.5 else math.sqrt(rnd.random())
        pts.append(destination(fence.lat, fence.lng, rnd.uniform(0.0, 360.0), r * frac))
    return [p for p in pts if fence.covers(*p)]


@SETTINGS
@given(centre=centres, radius=radii, seed=st.integers(0, 2**32))
def test_circle_cover_never_misses(centre: tuple[float, float], radius: float, seed: int) -> None:
    lat, lng = centre
    rec = FenceRecord("c", "circle", lat, lng, radius_m=radius)
    index = FenceIndex.build([rec])
    fence = index.get("c")
    assert isinstance(fence, CircleFence)
    res, cells = circle_cover(lat, lng, radius)
    assert len(cells) <= 60
    cell_set = set(cells)
    for plat, plng in _inside_points(fence, seed):
        assert h3.latlng_to_cell(plat, plng, res) in cell_set, (plat, plng)
        assert [m.fence.store_id for m in index.match(plat, plng)] == ["c"]


@pytest.mark.parametrize("res", [4, 5, 7, 9, 10])
def test_circles_around_every_pentagon(res: int) -> None:
    radius = h3.average_hexagon_edge_length(res, "m")  # the largest circle of its resolution
    assert resolution_for_size(radius) == res
    recs = []
    for i, p in enumerate(h3.get_pentagons(res)):
        plat, plng = h3.cell_to_latlng(p)
        for j, off in enumerate((0.0, 0.5, 1.0, 2.0, 3.5)):
            lat, lng = destination(plat, plng, 37.0 * j, off * radius)
            recs.append(FenceRecord(f"p{i}-{j}", "", lat, lng, radius_m=radius))
    index = FenceIndex.build(recs)
    rnd = random.Random(res)
    for rec in recs:
        fence = index.get(rec.store_id)
        assert isinstance(fence, CircleFence)
        for plat, plng in _inside_points(fence, rnd.randrange(2**32), n=150):
            assert rec.store_id in {m.fence.store_id for m in index.match(plat, plng)}


def test_batch_and_single_covers_agree() -> None:
    rng = np.random.default_rng(7)
    lats, lngs = rng.uniform(-89.9, 89.9, 300), rng.uniform(-180.0, 180.0, 300)
    radii_m = rng.choice([10.0, 45.72, 100.0, 1000.0, 10_000.0], 300)
    res, cells, owners = circle_covers(lats, lngs, radii_m)
    for i in range(0, 300, 17):
        r1, c1 = circle_cover(float(lats[i]), float(lngs[i]), float(radii_m[i]))
        assert r1 == res[i]
        assert c1 == sorted(cells[owners == i].tolist())


def test_small_circle_is_never_empty() -> None:
    for lat, lng in [(0.0, 0.0), (40.0, -74.0), (89.9999, 12.0), (-33.0, 180.0)]:
        _, cells = circle_cover(lat, lng, 10.0)
        assert h3.latlng_to_cell(lat, lng, 10) in cells


def _star_polygon(
    lat: float, lng: float, size_deg: float, angles: list[float], radii_f: list[float]
) -> list[list[float]]:
    """A simple (star-shaped) ring around (lat, lng) in unwrapped [lng, lat] positions."""
    ring = []
    for a, f in sorted(zip(angles, radii_f, strict=True)):
        dlat = size_deg * f * math.sin(a)
        dlng = size_deg * f * math.cos(a) / max(0.2, math.cos(math.radians(lat)))
        ring.append([lng + dlng, max(-90.0, min(90.0, lat + dlat))])
    ring.append(ring[0])
    return ring


def _wrap_split(ring: list[list[float]]) -> dict[str, Any]:
    """GeoJSON for a ring that may stick out past +-180: split it there, as files do."""
    poly = shapely.Polygon(ring)  # x = lng, y = lat (unwrapped)
    parts = []
    for shift in (-360.0, 0.0, 360.0):
        piece = shapely.intersection(shapely.box(-180.0 + shift, -90.0, 180.0 + shift, 90.0), poly)
        for p in shapely.get_parts(piece):
            if isinstance(p, shapely.Polygon) and p.area > 0:
                parts.append(shapely.affinity.translate(p, xoff=-shift))
    geom = parts[0] if len(parts) == 1 else shapely.MultiPolygon(parts)
    return dict(mapping(geom))


polygons = st.builds(
    lambda lat, lng, size, n, angles, fs, hole: (lat, lng, size, angles[:n], fs[:n], hole),
    st.one_of(st.floats(-80.0, 80.0), st.floats(84.0, 89.5), st.floats(-89.5, -84.0)),
    st.one_of(st.floats(-180.0, 180.0), st.floats(178.0, 180.0), st.floats(-180.0, -178.0)),
    st.one_of(st.floats(0.0002, 0.01), st.floats(0.01, 3.0)),
    st.integers(3, 4),
    st.lists(st.floats(0.0, 2 * math.pi), min_size=4, max_size=4, unique=True),
    st.lists(st.floats(0.3, 1.0), min_size=4, max_size=4),
    st.booleans(),
)


@SETTINGS
@given(poly=polygons, seed=st.integers(0, 2**32))
def test_polygon_cover_never_misses(
    poly: tuple[float, float, float, list[float], list[float], bool], seed: int
) -> None:
    lat, lng, size, angles, fs, with_hole = poly
    ring = _star_polygon(lat, lng, size, angles, fs)
    shell = shapely.Polygon(ring)
    if not shell.is_valid or shell.area < 1e-14:
        return
    if with_hole:
        c = shell.centroid
        hole = shapely.Point(c.x, c.y).buffer(size * 0.05, quad_segs=2)
        if shell.contains(hole):
            ring_poly = shapely.Polygon(ring, [list(hole.exterior.coords)])
            ring = [list(p) for p in ring_poly.exterior.coords]
            shell = ring_poly
    geojson = _wrap_split([list(p) for p in shell.exterior.coords])
    lng_min, _, lng_max, _ = shell.bounds
    if shell.interiors and geojson["type"] == "Polygon" and lng_min >= -180.0 and lng_max <= 180.0:
        # (Only a shell within [-180, 180] keeps its hole: files cannot hold positions past
        # the antimeridian, and the parser rejects them.)
        geojson = dict(mapping(shapely.Polygon(shell.exterior.coords, [shell.interiors[0].coords])))
    rec = FenceRecord("p", "poly", lat, ((lng + 180.0) % 360.0) - 180.0, geometry=geojson)
    index = FenceIndex.build([rec])
    fence = index.get("p")
    assert isinstance(fence, PolygonFence)
    res, cells = polygon_cover(fence.geom)
    cell_set = set(cells)
    assert len(cells) <= 400

    rnd = random.Random(seed)
    pts = [(float(y), float(x)) for x, y in shapely.get_coordinates(fence.geom)]  # vertices
    lng_lo, lat_lo, lng_hi, lat_hi = fence.geom.bounds
    for _ in range(200):
        pts.append((rnd.uniform(lat_lo, lat_hi), rnd.uniform(lng_lo, lng_hi)))
    edges = shapely.get_coordinates(shapely.boundary(fence.geom))
    for _ in range(50):
        i = rnd.randrange(len(edges) - 1)
        t = rnd.random()
        x = edges[i][0] + t * (edges[i + 1][0] - edges[i][0])
        y = edges[i][1] + t * (edges[i + 1][1] - edges[i][1])
        pts.append((float(y), float(x)))
    inside = [p for p in pts if fence.covers(*p)]
    assert inside  # at least the vertices
    for plat, plng in inside:
        assert h3.latlng_to_cell(plat, plng, res) in cell_set, (plat, plng)
        assert [m.fence.store_id for m in index.match(plat, plng)] == ["p"]


def test_polygon_much_larger_than_a_cell() -> None:
    # A long thin strip at a fine resolution: hundreds of cells, all reached.
    strip = shapely.box(10.0, 45.0, 10.2, 45.002)  # x = lng, y = lat
    res, cells = polygon_cover(strip, res=10)
    assert res == 10 and len(cells) > 100
    rnd = random.Random(3)
    cell_set = set(cells)
    for _ in range(3000):
        lat, lng = rnd.uniform(45.0, 45.002), rnd.uniform(10.0, 10.2)
        assert h3.latlng_to_cell(lat, lng, 10) in cell_set


def test_polar_cap_polygon() -> None:
    # Drawn in the plane, a box from lat 88 to 90 spanning all longitudes is the polar cap.
    cap = shapely.box(-180.0, 88.0, 180.0, 90.0)
    res, cells = polygon_cover(cap)
    rnd = random.Random(5)
    for _ in range(3000):
        lat, lng = rnd.uniform(88.0, 90.0), rnd.uniform(-180.0, 180.0)
        assert h3.latlng_to_cell(lat, lng, res) in cells
