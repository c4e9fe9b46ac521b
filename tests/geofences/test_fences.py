"""Unit tests for the exact fences: circle and polygon "inside", hysteresis and margins."""

from __future__ import annotations

import math
from typing import Any

import pytest

from geofences.fences import (
    CircleFence,
    PolygonFence,
    default_exit_margin_m,
    fence_from_record,
)
from geofences.index import FenceIndex, Match
from geofences.model import DEFAULT_RADIUS_M, FenceRecord
from geofences.sphere import sphere_distance_m
from tests.geofences.test_cover import destination

SQUARE_WITH_HOLE: dict[str, Any] = {
    "type": "Polygon",
    "coordinates": [
        [[0.0, 0.0], [0.01, 0.0], [0.01, 0.01], [0.0, 0.01], [0.0, 0.0]],
        [[0.004, 0.004], [0.006, 0.004], [0.006, 0.006], [0.004, 0.006], [0.004, 0.004]],
    ],
}
# A box from lng 179.99 to -179.99 (across the antimeridian), split at +-180 as files do.
ACROSS_180: dict[str, Any] = {
    "type": "MultiPolygon",
    "coordinates": [
        [[[179.99, -0.01], [180.0, -0.01], [180.0, 0.01], [179.99, 0.01], [179.99, -0.01]]],
        [[[-180.0, -0.01], [-179.99, -0.01], [-179.99, 0.01], [-180.0, 0.01], [-180.0, -0.01]]],
    ],
}


def circle(
    radius_m: float = DEFAULT_RADIUS_M, lat: float = 40.0, lng: float = -74.0
) -> CircleFence:
    fence = fence_from_record(FenceRecord("c1", "Cafe", lat, lng, radius_m=radius_m))
    assert isinstance(fence, CircleFence)
    return fence


def polygon(geometry: dict[str, Any], lat: float = 0.005, lng: float = 0.002) -> PolygonFence:
    fence = fence_from_record(FenceRecord("p1", "Mall", lat, lng, geometry=geometry))
    assert isinstance(fence, PolygonFence)
    return fence


def test_default_radius_is_fifty_yards() -> None:
    assert DEFAULT_RADIUS_M == 50 * 0.9144
    f = circle()
    assert f.covers(*destination(40.0, -74.0, 10.0, 45.70))
    assert not f.covers(*destination(40.0, -74.0, 10.0, 45.74))


@pytest.mark.parametrize("bearing", [0.0, 45.0, 90.0, 200.0, 315.0])
def test_one_millimetre_inside_and_outside_the_edge(bearing: float) -> None:
    f = circle(100.0, lat=51.5, lng=-0.12)
    inside = destination(f.lat, f.lng, bearing, 100.0 - 0.001)
    outside = destination(f.lat, f.lng, bearing, 100.0 + 0.001)
    assert (
        sphere_distance_m(f.lat, f.lng, *inside)
        <= 100.0
        < sphere_distance_m(f.lat, f.lng, *outside)
    )
    assert f.covers(*inside)
    assert not f.covers(*outside)


def test_circle_attributes_and_distance() -> None:
    f = circle(100.0)
    assert (f.kind, f.store_id, f.name, f.radius_m, f.timezone, f.tags) == (
        "circle",
        "c1",
        "Cafe",
        100.0,
        "UTC",
        (),
    )
    assert f.distance_m(40.0, -74.0) == 0.0
    assert f.distance_m(40.001, -74.0) == pytest.approx(111.195, abs=0.01)
    assert f.match_distance_m(40.001, -74.0) is None
    assert f.match_distance_m(40.0005, -74.0) == pytest.approx(55.6, abs=0.1)


def test_polygon_with_hole() -> None:
    f = polygon(SQUARE_WITH_HOLE)
    assert f.kind == "polygon" and f.radius_m is None
    assert f.covers(0.002, 0.002)
    assert not f.covers(0.005, 0.005)  # in the hole
    assert f.covers(0.004, 0.005)  # on the hole's edge: boundary counts
    assert f.covers(0.0, 0.005)  # on the outer boundary
    assert f.covers(0.01, 0.01)  # on a vertex
    assert not f.covers(0.0100001, 0.005)
    assert f.distance_m(0.005, 0.002) == 0.0


def test_multipolygon_across_the_antimeridian() -> None:
    f = polygon(ACROSS_180, lat=0.0, lng=180.0)
    assert f.covers(0.0, 179.995)
    assert f.covers(0.0, -179.995)
    assert f.covers(0.0, 180.0) and f.covers(0.0, -180.0)
    assert not f.covers(0.0, 0.0)
    assert not f.covers(0.0, 179.98)
    index = FenceIndex.build([FenceRecord("p1", "Mall", 0.0, 180.0, geometry=ACROSS_180)])
    assert [m.fence.store_id for m in index.match(0.005, -179.995)] == ["p1"]
    assert [m.fence.store_id for m in index.match(-0.005, 179.995)] == ["p1"]


def test_circle_still_inside_hysteresis() -> None:
    f = circle(100.0)
    assert f.exit_margin_m == 20.0
    at = [destination(f.lat, f.lng, 90.0, d) for d in (99.0, 110.0, 119.9, 120.1)]
    assert [f.still_inside(lat, lng, f.exit_margin_m) for lat, lng in at] == [
        True,
        True,
        True,
        False,
    ]
    assert not f.covers(*at[1])  # outside for entering, still inside for leaving


def test_polygon_still_inside_hysteresis() -> None:
    f = polygon(SQUARE_WITH_HOLE)
    m_per_deg = 111_195.08
    east_edge = 0.01
    just_out = (0.002, east_edge + 5.0 / m_per_deg)  # ~5 m east of the edge
    far_out = (0.002, east_edge + 15.0 / m_per_deg)
    assert not f.covers(*just_out)
    assert f.still_inside(*just_out, 10.0)
    assert not f.still_inside(*far_out, 10.0)
    assert not f.still_inside(*just_out, 0.0)
    # The hole is "outside": 5 m into it from its edge is within a 10 m margin.
    assert f.still_inside(0.005, 0.004 + 5.0 / m_per_deg, 10.0)
    assert not f.still_inside(0.005, 0.005, 10.0)  # ~111 m from the hole's edge


def test_polygon_distance_is_to_the_area_not_the_store_point() -> None:
    f = polygon(SQUARE_WITH_HOLE)
    m_per_deg = 111_195.08
    assert f.match_distance_m(0.009, 0.009) == 0.0  # inside, far from the store point
    assert f.distance_m(0.0, 0.01) == 0.0  # on a vertex
    for metres in (5.0, 60.0, 2000.0):
        east = f.distance_m(0.002, 0.01 + metres / m_per_deg)
        assert east == pytest.approx(metres, rel=0.01)
        assert f.match_distance_m(0.002, 0.01 + metres / m_per_deg) is None
    # In the hole: outside, measured to the hole's nearest edge (~111 m from its centre).
    assert f.distance_m(0.005, 0.005) == pytest.approx(0.001 * m_per_deg, rel=0.01)


def test_polygon_still_inside_across_the_antimeridian() -> None:
    f = polygon(ACROSS_180, lat=0.0, lng=180.0)
    east = -179.99 + 5.0 / 111_195.08  # 5 m beyond the far edge of the western part
    assert not f.covers(0.0, east)
    assert f.still_inside(0.0, east, 10.0)
    assert not f.still_inside(0.0, east, 3.0)


def test_exit_margins() -> None:
    assert default_exit_margin_m(10.0) == 10.0
    assert circle(45.72).exit_margin_m == 10.0
    assert circle(1000.0).exit_margin_m == 200.0
    # A 0.01 x 0.01 degree square at the equator: ~1112 m a side, equivalent radius ~627 m.
    square: dict[str, Any] = {
        "type": "Polygon",
        "coordinates": [[[0.0, 0.0], [0.01, 0.0], [0.01, 0.01], [0.0, 0.01], [0.0, 0.0]]],
    }
    f = polygon(square)
    side = 0.01 * 111_195.08
    assert f.equivalent_radius_m == pytest.approx(side / math.sqrt(math.pi), rel=1e-3)
    assert f.exit_margin_m == pytest.approx(0.2 * side / math.sqrt(math.pi), rel=1e-3)
    # The split halves of ACROSS_180 add up to the area of one 0.02 x 0.02 degree box.
    g = polygon(ACROSS_180, lat=0.0, lng=180.0)
    assert g.area_m2 == pytest.approx((0.02 * 111_195.08) ** 2, rel=1e-3)


def test_index_basics() -> None:
    recs = [
        FenceRecord("a", "A", 40.0, -74.0, radius_m=100.0),
        FenceRecord("b", "B", 40.0005, -74.0, radius_m=100.0),
        FenceRecord("p1", "Mall", 0.005, 0.002, geometry=SQUARE_WITH_HOLE),
    ]
    index = FenceIndex.build(recs, version=3)
    assert len(index) == 3 and "a" in index and "zz" not in index and index.version == 3
    assert index.get("zz") is None
    got = index.match(40.0004, -74.0)
    assert [m.fence.store_id for m in got] == ["b", "a"]
    assert isinstance(got[0], Match) and got[0].distance_m < got[1].distance_m
    stats = index.stats()
    assert (stats["fences"], stats["circles"], stats["polygons"]) == (3, 2, 1)
    assert stats["entries"] == index.entries > 0 and stats["resolutions"] == list(index.resolutions)
    with pytest.raises(ValueError, match="duplicate"):
        FenceIndex.build([recs[0], recs[0]])


def test_ties_sorted_by_store_id() -> None:
    recs = [FenceRecord(s, s, 10.0, 10.0, radius_m=50.0) for s in ("z", "m", "a")]
    index = FenceIndex.build(recs)
    assert [m.fence.store_id for m in index.match(10.0, 10.0001)] == ["a", "m", "z"]


def test_empty_index() -> None:
    index = FenceIndex.build([])
    assert len(index) == 0 and index.match(0.0, 0.0) == [] and index.entries == 0
