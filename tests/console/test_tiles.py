"""The console's vector tiles on both backends: PostGIS ST_AsMVT and the in-memory index."""

from __future__ import annotations

import math

import mapbox_vector_tile
import pytest
from sqlalchemy import text

from geofences import EARTH_RADIUS_M
from service.console import tiles
from service.console.tiles import tile_bounds_lnglat
from tests.console.conftest import Api, sign_in

# 30 circles around Flatiron (a dense cluster), 2 far away, and one polygon in SoHo.
STORES = (
    "store_id,name,lat,lng,radius_m,tags\n"
    + "".join(
        f"nyc-{i:03d},Store {i},{40.74 + (i % 6) * 0.002:.4f},{-73.99 + (i // 6) * 0.002:.4f},50,"
        f"{'downtown;nyc' if i % 2 == 0 else 'nyc'}\n"
        for i in range(30)
    )
    + "suva,Suva,-18.1416,178.4233,100,fiji\nldn,King's Cross,51.5308,-0.1238,200,uk\n"
)
POLYGON = b"""{"type": "FeatureCollection", "features": [{"type": "Feature",
 "properties": {"store_id": "soho-mall", "name": "SoHo Mall", "tags": ["mall"]},
 "geometry": {"type": "Polygon", "coordinates": [[[-74.004, 40.722], [-74.001, 40.722],
   [-74.001, 40.725], [-74.004, 40.725], [-74.004, 40.722]]]}}]}"""


def tile_xy(lat: float, lng: float, z: int) -> tuple[int, int]:
    n = 1 << z
    x = int((lng + 180) / 360 * n)
    phi = math.radians(lat)
    y = int((1 - math.log(math.tan(phi) + 1 / math.cos(phi)) / math.pi) / 2 * n)
    return x, y


def load(api: Api) -> None:
    for name, body in (("stores.csv", STORES.encode()), ("mall.geojson", POLYGON)):
        r = api.client.post("/v1/geofences/import", files={"file": (name, body)}, headers=api.admin)
        assert r.status_code == 200, r.text


def get_tile(api: Api, z: int, x: int, y: int, **params: str) -> dict:
    r = api.client.get(f"/console/tiles/{z}/{x}/{y}.mvt", params=params)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/vnd.mapbox-vector-tile"
    if not r.content:
        return {}
    return mapbox_vector_tile.decode(r.content, default_options={"y_coord_down": True})


def test_tiles_need_a_session(any_api: Api) -> None:
    r = any_api.client.get("/console/tiles/0/0/0.mvt")
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "unauthorized"
    r = any_api.client.get("/console/tiles/0/0/0.mvt", headers=any_api.admin)
    assert r.status_code == 401, "an API key is not a console session"


def test_world_tile_clusters_every_fence(any_api: Api) -> None:
    load(any_api)
    sign_in(any_api)
    layers = get_tile(any_api, 0, 0, 0)
    assert set(layers) == {"clusters"}
    features = layers["clusters"]["features"]
    assert sum(f["properties"]["count"] for f in features) == 33
    # New York's 31 fences fall in one 64 px cell at zoom 0; Suva and London are alone and
    # carry their store id.
    counts = sorted(f["properties"]["count"] for f in features)
    assert counts == [1, 1, 31]
    singles = {f["properties"].get("store_id") for f in features if f["properties"]["count"] == 1}
    assert singles == {"suva", "ldn"}
    # Quantized positions: Suva is in the lower right quarter of the world tile.
    suva = next(f for f in features if f["properties"].get("store_id") == "suva")
    x, y = suva["geometry"]["coordinates"]
    assert 4096 * 0.99 < x < 4096 and 2048 < y < 2400


def test_tag_filter_on_tiles(any_api: Api) -> None:
    load(any_api)
    sign_in(any_api)
    layers = get_tile(any_api, 0, 0, 0, tag="downtown")
    assert sum(f["properties"]["count"] for f in layers["clusters"]["features"]) == 15
    assert get_tile(any_api, 0, 0, 0, tag="no-such-tag") == {}


def test_mid_zoom_points_and_polygon_as_drawn(any_api: Api) -> None:
    load(any_api)
    sign_in(any_api)
    z = 12
    x, y = tile_xy(40.74, -73.99, z)
    features = get_tile(any_api, z, x, y)["fences"]["features"]
    by_id = {f["properties"]["store_id"]: f for f in features}
    assert {f"nyc-{i:03d}" for i in range(30)} <= set(by_id)
    circle = by_id["nyc-000"]
    assert circle["geometry"]["type"] == "Point"
    assert circle["properties"]["radius_m"] == 50.0
    assert circle["properties"]["kind"] == "circle"
    xs, ys = tile_xy(40.7235, -74.0025, z)
    mall = get_tile(any_api, z, xs, ys)["fences"]["features"]
    poly = next(f for f in mall if f["properties"]["store_id"] == "soho-mall")
    assert poly["geometry"]["type"] == "Polygon"
    assert poly["properties"]["name"] == "SoHo Mall"


def test_high_zoom_circles_at_their_true_radius(any_api: Api) -> None:
    load(any_api)
    sign_in(any_api)
    z = 17
    lat, lng = 51.5308, -0.1238  # King's Cross, 200 m
    x, y = tile_xy(lat, lng, z)
    found = []
    for dx in (-1, 0, 1):  # a 400 m circle spans several 300 m tiles at zoom 17
        for dy in (-1, 0, 1):
            layers = get_tile(any_api, z, x + dx, y + dy)
            for f in layers.get("fences", {}).get("features", []):
                if f["properties"]["store_id"] == "ldn":
                    found.append((dx, dy, f))
    # 400 m across, the circle spans about two 190 m tiles: it reaches into the tiles east
    # and west of its own (and some corners, depending on where its centre falls).
    assert {(dx, dy) for dx, dy, _ in found} >= {(-1, 0), (0, 0), (1, 0), (0, -1), (0, 1)}
    centre = next(f for dx, dy, f in found if (dx, dy) == (0, 0))
    assert centre["geometry"]["type"] == "Polygon"
    # Width of the circle, measured across the tiles: 400 m in Mercator pixels at this lat.
    w, _, e, _ = tile_bounds_lnglat(z, x, y)
    metres_per_unit = (
        (e - w) / 360 * 2 * math.pi * EARTH_RADIUS_M * math.cos(math.radians(lat)) / 4096
    )
    west = next(f for dx, dy, f in found if (dx, dy) == (-1, 0))
    east = next(f for dx, dy, f in found if (dx, dy) == (1, 0))
    left = min(px for px, _ in west["geometry"]["coordinates"][0]) - 4096
    right = max(px for px, _ in east["geometry"]["coordinates"][0]) + 4096
    width_m = (right - left) * metres_per_unit
    assert width_m == pytest.approx(400, rel=0.03)


def test_tiles_follow_imports_and_answer_304(any_api: Api) -> None:
    sign_in(any_api)
    assert get_tile(any_api, 0, 0, 0) == {}
    first = any_api.client.get("/console/tiles/0/0/0.mvt")
    again = any_api.client.get(
        "/console/tiles/0/0/0.mvt", headers={"If-None-Match": first.headers["etag"]}
    )
    assert again.status_code == 304
    load(any_api)
    after = any_api.client.get(
        "/console/tiles/0/0/0.mvt", headers={"If-None-Match": first.headers["etag"]}
    )
    assert after.status_code == 200 and after.content, "an import changes the tile"


def test_tile_out_of_range(any_api: Api) -> None:
    sign_in(any_api)
    assert any_api.client.get("/console/tiles/2/4/0.mvt").status_code == 404
    assert any_api.client.get("/console/tiles/23/0/0.mvt").status_code == 404


def test_zoomed_out_tiles_from_cells_match_the_table(api: Api) -> None:
    """PostgreSQL: tiles up to SUMMARY_Z from the per-version cell counts are the tiles
    aggregated from the table itself."""
    load(api)
    engine = api.app_state.engine
    version = tiles.build_pg_cells(engine)
    assert tiles.build_pg_cells(engine) == version, "built once per version"

    def decode(data: bytes) -> list[tuple[int, str | None, tuple[int, int]]]:
        if not data:
            return []
        layer = mapbox_vector_tile.decode(data, default_options={"y_coord_down": True})["clusters"]
        return sorted(
            (f["properties"]["count"], f["properties"].get("store_id"),
             tuple(f["geometry"]["coordinates"]))
            for f in layer["features"]
        )  # fmt: skip

    compared = 0
    with engine.connect() as conn:
        for z in range(tiles.SUMMARY_Z + 1):
            for lat, lng in ((40.74, -73.99), (-18.1416, 178.4233), (51.5308, -0.1238)):
                x, y = tile_xy(lat, lng, z)
                live = decode(tiles.pg_tile(conn, z, x, y))
                cells = decode(tiles.pg_tile(conn, z, x, y, None, version))
                assert [c[:2] for c in cells] == [c[:2] for c in live], (z, x, y)
                for a, b in zip(cells, live, strict=True):  # the same mean position
                    assert abs(a[2][0] - b[2][0]) <= 1 and abs(a[2][1] - b[2][1]) <= 1
                compared += len(live)
        rows = conn.execute(text("SELECT count(*) FROM console_fence_cells")).scalar_one()
    assert compared > 0 and rows > 0
    # The next version's cells replace this one's.
    r = api.client.delete("/v1/geofences/suva", headers=api.admin)
    assert r.status_code == 204
    newer = tiles.build_pg_cells(engine)
    assert newer == version + 1
    with engine.connect() as conn:
        kept = (
            conn.execute(text("SELECT DISTINCT version FROM console_fence_cells")).scalars().all()
        )
        x, y = tile_xy(-18.1416, 178.4233, 3)
        assert decode(tiles.pg_tile(conn, 3, x, y, None, newer)) == []
    assert kept == [newer]
