"""PostGIS as the oracle: FenceIndex.match returns exactly the (ping, store) pairs PostGIS does.

Circles against ``ST_DWithin(center::geography, ping::geography, r, false)`` and polygons
against ``ST_Covers(geometry(4326), ping)``, on seeded random data that includes pings
within a millimetre (circles) or 1e-8 degrees (polygons) of the edges.
"""

from __future__ import annotations

import math
import random

import h3.api.basic_int as h3
import psycopg
import shapely
from shapely.geometry import mapping

from geofences.index import FenceIndex
from geofences.model import DEFAULT_RADIUS_M, MAX_RADIUS_M, FenceRecord
from tests.geofences.test_cover import destination

Pair = tuple[int, str]


def _circle_centre(rnd: random.Random, cities: list[tuple[float, float]]) -> tuple[float, float]:
    kind = rnd.random()
    if kind < 0.5:  # clustered in cities, so fences overlap
        lat, lng = rnd.choice(cities)
        return destination(lat, lng, rnd.uniform(0, 360), rnd.uniform(0, 5000))
    if kind < 0.65:  # across the antimeridian
        return rnd.uniform(-80, 80), rnd.choice([1, -1]) * rnd.uniform(179.9, 180.0)
    if kind < 0.8:  # polar
        return rnd.choice([1, -1]) * rnd.uniform(85.0, 90.0), rnd.uniform(-180, 180)
    if kind < 0.9:  # around pentagons
        p = rnd.choice(h3.get_pentagons(rnd.choice([4, 7, 9, 10])))
        lat, lng = h3.cell_to_latlng(p)
        return destination(lat, lng, rnd.uniform(0, 360), rnd.uniform(0, 3000))
    z = rnd.uniform(-1, 1)
    return math.degrees(math.asin(z)), rnd.uniform(-180, 180)


def _match_pairs(index: FenceIndex, pings: list[tuple[float, float]]) -> set[Pair]:
    return {
        (i, m.fence.store_id) for i, (lat, lng) in enumerate(pings) for m in index.match(lat, lng)
    }


def test_circles_agree_with_postgis(pg: psycopg.Connection) -> None:
    rnd = random.Random(20240611)
    cities = [(rnd.uniform(-60, 70), rnd.uniform(-180, 180)) for _ in range(20)]
    recs: list[FenceRecord] = []
    for i in range(2000):
        lat, lng = _circle_centre(rnd, cities)
        radius = rnd.choice([10.0, DEFAULT_RADIUS_M, 1000.0, MAX_RADIUS_M, rnd.uniform(10, 10_000)])
        recs.append(FenceRecord(f"c{i}", "", lat, lng, radius_m=radius))
    pings: list[tuple[float, float]] = []
    for _ in range(10_000):  # random, near a fence
        f = rnd.choice(recs)
        assert f.radius_m is not None
        pings.append(
            destination(f.lat, f.lng, rnd.uniform(0, 360), rnd.uniform(0, 1.5) * f.radius_m)
        )
    for _ in range(10_000):  # within 1 mm of an edge, both sides
        f = rnd.choice(recs)
        assert f.radius_m is not None
        d = f.radius_m + rnd.uniform(-0.001, 0.001)
        pings.append(destination(f.lat, f.lng, rnd.uniform(0, 360), d))

    index = FenceIndex.build(recs)
    pg.execute("CREATE TEMP TABLE fence (id text, g geography(Point, 4326), r float8)")
    pg.execute("CREATE TEMP TABLE ping (pid int, g geography(Point, 4326))")
    pg.execute(
        "INSERT INTO fence SELECT id, ST_MakePoint(lng, lat)::geography, r"
        " FROM unnest(%s::text[], %s::float8[], %s::float8[], %s::float8[]) AS t(id, lat, lng, r)",
        (
            [r.store_id for r in recs],
            [r.lat for r in recs],
            [r.lng for r in recs],
            [r.radius_m for r in recs],
        ),
    )
    pg.execute(
        "INSERT INTO ping SELECT pid - 1, ST_MakePoint(lng, lat)::geography"
        " FROM unnest(%s::float8[], %s::float8[]) WITH ORDINALITY AS t(lat, lng, pid)",
        ([p[0] for p in pings], [p[1] for p in pings]),
    )
    pg.execute("CREATE INDEX ON fence USING gist (g)")
    pg.execute("ANALYZE fence; ANALYZE ping")
    # The constant-radius ST_DWithin lets the planner use the GiST index (FACTS.md).
    rows = pg.execute(
        "SELECT p.pid, f.id FROM ping p JOIN fence f"
        " ON ST_DWithin(f.g, p.g, %s, false) AND ST_DWithin(f.g, p.g, f.r, false)",
        (MAX_RADIUS_M,),
    ).fetchall()
    expected = {(int(pid), str(sid)) for pid, sid in rows}
    got = _match_pairs(index, pings)
    assert len(expected) > 10_000  # the edge pings split about evenly
    assert got - expected == set(), sorted(got - expected)[:5]
    assert expected - got == set(), sorted(expected - got)[:5]


def _random_polygon(rnd: random.Random) -> dict[str, object]:
    kind = rnd.random()
    if kind < 0.25:  # straddles the antimeridian: split into a MultiPolygon at +-180
        lat, lng = rnd.uniform(-70, 70), 180.0
    elif kind < 0.35:
        lat, lng = rnd.choice([1, -1]) * rnd.uniform(84.0, 89.0), rnd.uniform(-179, 179)
    else:
        lat, lng = rnd.uniform(-70, 70), rnd.uniform(-179, 179)
    size = rnd.choice([0.001, 0.01, 0.1, 1.0]) * rnd.uniform(0.5, 1.0)
    n = rnd.randint(3, 8)
    angles = sorted(rnd.uniform(0, 2 * math.pi) for _ in range(n))
    shell = [
        (
            lng + size * rnd.uniform(0.4, 1.0) * math.cos(a),
            lat + size * rnd.uniform(0.4, 1.0) * math.sin(a),
        )
        for a in angles
    ]  # (x = lng, y = lat), unwrapped
    poly = shapely.Polygon(shell)
    if not poly.is_valid:
        poly = shapely.make_valid(poly).convex_hull
    if rnd.random() < 0.5:  # a hole around the centre
        hole = shapely.Point(lng, lat).buffer(size * 0.2, quad_segs=2)
        if poly.contains(hole):
            poly = shapely.Polygon(poly.exterior.coords, [hole.exterior.coords])
    parts = []
    for shift in (-360.0, 0.0, 360.0):
        piece = shapely.intersection(shapely.box(-180 + shift, -90, 180 + shift, 90), poly)
        parts += [
            shapely.affinity.translate(p, xoff=-shift)
            for p in shapely.get_parts(piece)
            if isinstance(p, shapely.Polygon) and p.area > 0
        ]
    if rnd.random() < 0.3 and kind >= 0.25:  # a second, separate part
        parts.append(shapely.affinity.translate(parts[0], yoff=3 * size))
    geom = parts[0] if len(parts) == 1 else shapely.MultiPolygon(parts)
    return dict(mapping(geom))


def test_polygons_agree_with_postgis(pg: psycopg.Connection) -> None:
    rnd = random.Random(77)
    recs = []
    for i in range(300):
        geometry = _random_polygon(rnd)
        rp = shapely.geometry.shape(geometry).representative_point()
        recs.append(FenceRecord(f"p{i}", "", rp.y, rp.x, geometry=geometry))
    index = FenceIndex.build(recs)
    geoms = [shapely.geometry.shape(r.geometry) for r in recs]
    pings: list[tuple[float, float]] = []
    for g in geoms:
        lng_lo, lat_lo, lng_hi, lat_hi = g.bounds  # x = lng, y = lat
        for _ in range(25):
            pings.append((rnd.uniform(lat_lo, lat_hi), rnd.uniform(lng_lo, lng_hi)))
        coords = shapely.get_coordinates(g)
        for x, y in rnd.sample(list(coords), min(5, len(coords))):
            pings.append((float(y), float(x)))  # exactly on a vertex
        edges = shapely.get_coordinates(shapely.boundary(g))
        for _ in range(20):  # within 1e-8 degrees of an edge
            i = rnd.randrange(len(edges) - 1)
            t = rnd.random()
            x = edges[i][0] + t * (edges[i + 1][0] - edges[i][0]) + rnd.uniform(-1e-8, 1e-8)
            y = edges[i][1] + t * (edges[i + 1][1] - edges[i][1]) + rnd.uniform(-1e-8, 1e-8)
            pings.append((max(-90.0, min(90.0, y)), max(-180.0, min(180.0, x))))

    pg.execute("CREATE TEMP TABLE poly (id text, g geometry(Geometry, 4326))")
    pg.execute("CREATE TEMP TABLE ppt (pid int, g geometry(Point, 4326))")
    pg.execute(
        "INSERT INTO poly SELECT id, ST_SetSRID(ST_GeomFromWKB(wkb), 4326)"
        " FROM unnest(%s::text[], %s::bytea[]) AS t(id, wkb)",
        ([r.store_id for r in recs], [shapely.to_wkb(g) for g in geoms]),  # WKB: exact doubles
    )
    pg.execute(
        "INSERT INTO ppt SELECT pid - 1, ST_SetSRID(ST_MakePoint(lng, lat), 4326)"
        " FROM unnest(%s::float8[], %s::float8[]) WITH ORDINALITY AS t(lat, lng, pid)",
        ([p[0] for p in pings], [p[1] for p in pings]),
    )
    pg.execute("CREATE INDEX ON poly USING gist (g)")
    pg.execute("ANALYZE poly; ANALYZE ppt")
    rows = pg.execute("SELECT p.pid, f.id FROM ppt p JOIN poly f ON ST_Covers(f.g, p.g)").fetchall()
    expected = {(int(pid), str(sid)) for pid, sid in rows}
    got = _match_pairs(index, pings)
    assert len(expected) > 3000
    assert got - expected == set(), sorted(got - expected)[:5]
    assert expected - got == set(), sorted(expected - got)[:5]
