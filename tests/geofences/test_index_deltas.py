"""An index made by thousands of random deltas answers exactly as a fresh build and PostGIS.

Deltas: adds, moves, radius changes, polygon edits, deletes, in batches of 1 to 200, some on
the same store twice; part of the way through the view is saved, mapped back (as replicas
share it) and the remaining deltas go on top of the mapped base.
"""

from __future__ import annotations

import random
from pathlib import Path

import psycopg
import shapely
from shapely.geometry import mapping

from geofences.base import Columns, FenceBase
from geofences.index import FenceIndex
from geofences.model import DEFAULT_RADIUS_M, FenceRecord
from tests.geofences.test_cover import destination
from tests.geofences.test_postgis_oracle import _circle_centre, _random_polygon

Pair = tuple[int, str]


def _circle(rnd: random.Random, sid: str, cities: list[tuple[float, float]]) -> FenceRecord:
    lat, lng = _circle_centre(rnd, cities)
    radius = rnd.choice([10.0, DEFAULT_RADIUS_M, 300.0, 2000.0, rnd.uniform(10, 10_000)])
    return FenceRecord(sid, f"n{sid}", lat, lng, radius_m=radius, tags=(rnd.choice("ab"),))


def _polygon(rnd: random.Random, sid: str) -> FenceRecord:
    geometry = _random_polygon(rnd)
    rp = shapely.geometry.shape(geometry).representative_point()
    return FenceRecord(sid, f"n{sid}", rp.y, rp.x, geometry=geometry, timezone="Europe/Paris")


def _edit(rnd: random.Random, rec: FenceRecord, cities: list[tuple[float, float]]) -> FenceRecord:
    """A move, a radius change, or a polygon edit (shifted and scaled), same store id."""
    if rec.geometry is not None:
        g = shapely.geometry.shape(rec.geometry)
        g = shapely.affinity.scale(g, rnd.uniform(0.5, 1.5), rnd.uniform(0.5, 1.5))
        g = shapely.affinity.translate(g, rnd.uniform(-0.01, 0.01), rnd.uniform(-0.01, 0.01))
        bounds_ok = g.bounds[0] >= -180 and g.bounds[2] <= 180 and g.bounds[1] >= -90
        if g.is_valid and bounds_ok and g.bounds[3] <= 90:
            rp = g.representative_point()
            return FenceRecord(rec.store_id, rec.name, rp.y, rp.x, geometry=dict(mapping(g)))
        return _polygon(rnd, rec.store_id)
    if rnd.random() < 0.5:
        assert rec.radius_m is not None
        lat, lng = destination(
            rec.lat, rec.lng, rnd.uniform(0, 360), rnd.uniform(1, 3 * rec.radius_m)
        )
        return FenceRecord(rec.store_id, rec.name, lat, lng, radius_m=rec.radius_m)
    return FenceRecord(
        rec.store_id, rec.name, rec.lat, rec.lng, radius_m=rnd.uniform(10, 10_000), tags=("c",)
    )


def _pairs(index: FenceIndex, pings: list[tuple[float, float]]) -> set[Pair]:
    return {(i, m.fence.store_id) for i, (la, ln) in enumerate(pings) for m in index.match(la, ln)}


def test_random_deltas_equal_a_fresh_build_and_postgis(
    pg: psycopg.Connection, tmp_path: Path
) -> None:
    rnd = random.Random(1010)
    cities = [(rnd.uniform(-60, 70), rnd.uniform(-180, 180)) for _ in range(15)]
    live: dict[str, FenceRecord] = {}
    for i in range(800):
        sid = f"s{i}"
        live[sid] = _polygon(rnd, sid) if i % 10 == 0 else _circle(rnd, sid, cities)
    index = FenceIndex.build(live.values(), version=0)
    next_id = 800
    n_changes = 0
    for version in range(1, 121):
        upserts: dict[str, FenceRecord] = {}
        deletes: set[str] = set()
        for _ in range(rnd.choice([1, 1, 2, 5, 20, 60, 200])):
            kind = rnd.random()
            if kind < 0.3 or not live:
                sid = f"s{next_id}"
                next_id += 1
                rec = _polygon(rnd, sid) if rnd.random() < 0.15 else _circle(rnd, sid, cities)
                upserts[sid] = rec
            elif kind < 0.75:
                sid = rnd.choice(sorted(live))
                upserts[sid] = _edit(rnd, upserts.get(sid, live[sid]), cities)
            else:
                sid = rnd.choice(sorted(live))
                deletes.add(sid)
                upserts.pop(sid, None)
        for sid in deletes:
            live.pop(sid, None)
        live.update(upserts)
        n_changes += len(upserts) + len(deletes)
        index = index.with_changes(list(upserts.values()), deletes, version)
        if version == 60:  # a replica maps the saved base and goes on from there
            path = tmp_path / "base"
            FenceBase.build(Columns.from_records(list(live.values())), version=version).save(path)
            index = FenceIndex.open(path)
            assert index.version == 60 and index.overlay_size == 0
    assert n_changes > 2000
    assert index.version == 120 and len(index) == len(live)
    assert index.overlay_size > 0
    fresh = FenceIndex.build(live.values(), version=120)
    for sid, rec in live.items():
        got = index.get(sid)
        assert got is not None and (got.lat, got.lng, got.radius_m) == (
            rec.lat,
            rec.lng,
            rec.radius_m if rec.geometry is None else None,
        )
        assert got.name == rec.name and got.tags == rec.tags and got.timezone == rec.timezone
    assert index.get("s1") is None or "s1" in live

    pings: list[tuple[float, float]] = []
    for rec in rnd.sample(sorted(live.values(), key=lambda r: r.store_id), 600):
        if rec.geometry is not None:
            g = shapely.geometry.shape(rec.geometry)
            lng_lo, lat_lo, lng_hi, lat_hi = g.bounds  # x = lng, y = lat
            for _ in range(10):
                pings.append((rnd.uniform(lat_lo, lat_hi), rnd.uniform(lng_lo, lng_hi)))
        else:
            assert rec.radius_m is not None
            for _ in range(5):
                d = rec.radius_m + rnd.uniform(-0.001, 0.001)
                pings.append(destination(rec.lat, rec.lng, rnd.uniform(0, 360), d))
                pings.append(
                    destination(
                        rec.lat, rec.lng, rnd.uniform(0, 360), rnd.uniform(0, 2) * rec.radius_m
                    )
                )
    got = _pairs(index, pings)
    assert got == _pairs(fresh, pings)
    circles = [r for r in live.values() if r.geometry is None]
    polys = [r for r in live.values() if r.geometry is not None]
    pg.execute("CREATE TEMP TABLE dfence (id text, g geography(Point, 4326), r float8)")
    pg.execute("CREATE TEMP TABLE dpoly (id text, g geometry(Geometry, 4326))")
    pg.execute("CREATE TEMP TABLE dping (pid int, lat float8, lng float8)")
    pg.execute(
        "INSERT INTO dfence SELECT id, ST_MakePoint(lng, lat)::geography, r"
        " FROM unnest(%s::text[], %s::float8[], %s::float8[], %s::float8[]) AS t(id, lat, lng, r)",
        ([r.store_id for r in circles], [r.lat for r in circles], [r.lng for r in circles],
         [r.radius_m for r in circles]),
    )  # fmt: skip
    pg.execute(
        "INSERT INTO dpoly SELECT id, ST_SetSRID(ST_GeomFromWKB(wkb), 4326)"
        " FROM unnest(%s::text[], %s::bytea[]) AS t(id, wkb)",
        ([r.store_id for r in polys],
         [shapely.to_wkb(shapely.geometry.shape(r.geometry)) for r in polys]),
    )  # fmt: skip
    pg.execute(
        "INSERT INTO dping SELECT pid - 1, lat, lng"
        " FROM unnest(%s::float8[], %s::float8[]) WITH ORDINALITY AS t(lat, lng, pid)",
        ([p[0] for p in pings], [p[1] for p in pings]),
    )
    rows = pg.execute(
        "SELECT p.pid, f.id FROM dping p JOIN dfence f"
        " ON ST_DWithin(f.g, ST_MakePoint(p.lng, p.lat)::geography, f.r, false)"
        " UNION ALL SELECT p.pid, f.id FROM dping p JOIN dpoly f"
        " ON ST_Covers(f.g, ST_SetSRID(ST_MakePoint(p.lng, p.lat), 4326))"
    ).fetchall()
    expected = {(int(pid), str(sid)) for pid, sid in rows}
    assert len(expected) > 1000 and any(s for _, s in expected if live[s].geometry is not None)
    assert got - expected == set(), sorted(got - expected)[:5]
    assert expected - got == set(), sorted(expected - got)[:5]


def test_views_are_immutable_and_columns_cover_live_fences() -> None:
    recs = [FenceRecord(f"s{i}", f"S{i}", 10.0 + i * 0.01, 20.0, radius_m=100.0) for i in range(5)]
    first = FenceIndex.build(recs, version=1)
    second = first.with_changes(
        [
            FenceRecord("s1", "moved", 11.0, 20.0, radius_m=50.0),
            FenceRecord("n", "N", 12.0, 20.0, radius_m=60.0),
        ],
        ["s2", "absent"],
        version=2,
    )
    assert [m.fence.store_id for m in first.match(10.01, 20.0)] == ["s1"]
    assert first.get("s2") is not None and first.version == 1 and len(first) == 5
    assert second.match(10.01, 20.0) == [] and second.get("s2") is None and "s2" not in second
    assert [m.fence.name for m in second.match(11.0, 20.0)] == ["moved"]
    assert len(second) == 5 and second.version == 2
    third = second.with_changes([], ["s1", "n"], version=3)
    assert third.match(11.0, 20.0) == [] and third.match(12.0, 20.0) == [] and len(third) == 3
    cols = third.columns()
    assert sorted(cols.store_id(i) for i in range(len(cols))) == ["s0", "s3", "s4"]
    cols2 = second.columns()
    ids = [cols2.store_id(i) for i in range(len(cols2))]
    i = ids.index("s1")
    assert (float(cols2.lat[i]), float(cols2.radius_m[i])) == (11.0, 50.0)
    assert cols2.fence(i).name == "moved"
    assert sorted(f.store_id for f in second) == sorted(ids)
