"""The whole stack against PostGIS as the oracle.

Fences go in through the import API (CSV with mixed units and no time zones, GeoJSON
polygons), are stored in PostGIS, rebuilt into the index, and pings go through
``POST /v1/locations``. Each ping comes from a new device, so its ``enter`` events are exactly
the fences it is inside. PostGIS answers the same question on the stored rows with
``ST_DWithin(location::geography, ping::geography, radius_m, false)`` and ``ST_Covers(shape,
ping)``; the two sets must be equal, including pings within a millimetre of an edge.
"""

from __future__ import annotations

import io
import itertools
import json
import random

import psycopg

from tests.helpers import ago, iso, offset
from tests.service.conftest import Api

CITIES = [
    (40.7128, -74.0060), (51.5072, -0.1276), (35.6762, 139.6503), (-33.8688, 151.2093),
    (-18.1416, 178.4419), (-16.7900, 179.9990), (-16.7900, -179.9990), (64.1466, -21.9426),
    (78.2232, 15.6267), (-77.8463, 166.6683), (1.3521, 103.8198), (-34.6037, -58.3816),
    (19.4326, -99.1332), (55.7558, 37.6173), (-1.2921, 36.8219), (21.3069, -157.8583),
    (-43.9535, -176.5597), (71.2906, -156.7886), (89.9, 45.0), (-89.9, 0.0),
]  # fmt: skip
UNITS = [
    ("", ""),
    ("50", "yd"),
    ("150", "ft"),
    ("0.1", "km"),
    ("0.02", "mi"),
    ("10", "m"),
    ("10", "km"),
]


def _fences(rng: random.Random) -> tuple[bytes, bytes, list[tuple[float, float, float]]]:
    rows = ["store_id,name,lat,lng,radius,radius_unit"]
    circles = []
    for i in range(1500):
        clat, clng = rng.choice(CITIES)
        lat, lng = offset(clat, clng, rng.uniform(0, 360), rng.uniform(0, 20_000))
        value, unit = rng.choice(UNITS)
        rows.append(f"c-{i},Store {i},{lat!r},{lng!r},{value},{unit}")
        factor = {"": 0, "yd": 0.9144, "ft": 0.3048, "km": 1000, "mi": 1609.344, "m": 1}[unit]
        circles.append((lat, lng, float(value) * factor if value else 45.72))
    features = []
    for i in range(60):
        clat, clng = rng.choice(CITIES[:8])
        lat, lng = offset(clat, clng, rng.uniform(0, 360), rng.uniform(0, 5000))
        w = rng.uniform(0.0005, 0.02)
        outer = [
            [lng - w, lat - w],
            [lng + w, lat - w * 0.7],
            [lng + w * 1.1, lat + w],
            [lng - w * 0.8, lat + w * 0.9],
        ]
        outer.append(outer[0])
        hole = [
            [lng - w / 4, lat - w / 4],
            [lng - w / 4, lat + w / 4],
            [lng + w / 4, lat + w / 4],
            [lng + w / 4, lat - w / 4],
        ]
        hole.append(hole[0])
        if any(abs(p[0]) > 180 for p in outer):
            continue
        features.append({
            "type": "Feature",
            "properties": {"store_id": f"p-{i}", "name": f"Mall {i}"},
            "geometry": {"type": "Polygon", "coordinates": [outer, hole] if i % 2 else [outer]},
        })  # fmt: skip
    doc = json.dumps({"type": "FeatureCollection", "features": features}).encode()
    return "\n".join(rows).encode() + b"\n", doc, circles


def _pings(
    rng: random.Random, circles: list[tuple[float, float, float]], polys: list[dict]
) -> list[tuple[float, float]]:
    pings = []
    for lat, lng, r in rng.sample(circles, 600):
        pings.append(offset(lat, lng, rng.uniform(0, 360), r + rng.uniform(-1e-3, 1e-3)))
        pings.append(offset(lat, lng, rng.uniform(0, 360), rng.uniform(0, 2 * r)))
    for f in polys:
        ring = f["geometry"]["coordinates"][0]
        for (x1, y1), (x2, y2) in itertools.pairwise(ring):
            t = rng.random()
            pings.append(
                (
                    y1 + t * (y2 - y1) + rng.uniform(-1e-8, 1e-8),
                    x1 + t * (x2 - x1) + rng.uniform(-1e-8, 1e-8),
                )
            )
        pings.append((ring[0][1], ring[0][0]))  # a vertex
    return pings


def test_enter_events_equal_postgis(api: Api) -> None:
    rng = random.Random(20261123)
    csv_bytes, geojson, circles = _fences(rng)
    c, h = api.client, api.admin
    r = c.post(
        "/v1/geofences/import", files={"file": ("stores.csv", io.BytesIO(csv_bytes))}, headers=h
    )
    assert r.status_code == 200, r.text[:2000]
    r = c.post(
        "/v1/geofences/import", files={"file": ("malls.geojson", io.BytesIO(geojson))}, headers=h
    )
    assert r.status_code == 200, r.text[:2000]
    polys = json.loads(geojson)["features"]
    pings = _pings(rng, circles, polys)

    ours: set[tuple[int, str]] = set()
    ts = iso(ago(5))
    for i, (lat, lng) in enumerate(pings):
        body = {
            "device_id": f"oracle-{i}",
            "lat": lat,
            "lng": lng,
            "accuracy_m": 5,
            "timestamp": ts,
        }
        answer = c.post("/v1/locations", json=body, headers=api.sdk).json()
        ours |= {(i, e["store_id"]) for e in answer["events"] if e["type"] == "enter"}

    lats = [p[0] for p in pings]
    lngs = [p[1] for p in pings]
    with psycopg.connect(api.settings.database_url, autocommit=True) as conn:
        conn.execute("SET jit = off")
        circle_hits = conn.execute(
            """
            WITH p AS (SELECT i, ST_SetSRID(ST_MakePoint(lng, lat), 4326) AS pt
                       FROM unnest(%s::float8[], %s::float8[]) WITH ORDINALITY AS t(lat, lng, i))
            SELECT p.i - 1, g.store_id FROM p JOIN geofences g
              ON ST_DWithin(g.location::geography, p.pt::geography, 10001, false)
             AND ST_DWithin(g.location::geography, p.pt::geography, g.radius_m, false)
            WHERE g.kind = 'circle'
            """,
            [lats, lngs],
        ).fetchall()
        poly_hits = conn.execute(
            """
            WITH p AS (SELECT i, ST_SetSRID(ST_MakePoint(lng, lat), 4326) AS pt
                       FROM unnest(%s::float8[], %s::float8[]) WITH ORDINALITY AS t(lat, lng, i))
            SELECT p.i - 1, g.store_id FROM p JOIN geofences g ON ST_Covers(g.shape, p.pt)
            WHERE g.kind = 'polygon'
            """,
            [lats, lngs],
        ).fetchall()
    theirs = {(int(i), s) for i, s in circle_hits} | {(int(i), s) for i, s in poly_hits}
    assert len(theirs) > 500, "the test must exercise many inside pings"
    assert any(s.startswith("p-") for _, s in theirs)
    assert ours == theirs, {
        "only_ours": sorted(ours - theirs)[:10],
        "only_postgis": sorted(theirs - ours)[:10],
    }
