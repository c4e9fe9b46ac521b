"""Geofence import, listing, read and delete through the HTTP API, on both backends."""

from __future__ import annotations

import psycopg
import pytest

from tests.service.conftest import Api

GOOD_CSV = b"""store_id,name,lat,lng,radius_m,tags
s-001,Flatiron,40.74172,-73.98964,,downtown;nyc
s-002,SoHo,40.72335,-74.00299,60,downtown
s-003,Suva,-18.14160,178.42330,100,fiji
"""


def upload(api: Api, content: bytes, name: str = "stores.csv", **params: str):
    return api.client.post(
        "/v1/geofences/import",
        params=params,
        files={"file": (name, content, "text/csv")},
        headers=api.admin,
    )


def fence_count(api: Api) -> int:
    return len(
        api.client.get("/v1/geofences", params={"limit": 1000}, headers=api.admin).json()["items"]
    )


def test_import_counts_and_reimport_is_unchanged(any_api: Api) -> None:
    r = upload(any_api, GOOD_CSV)
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["created"], body["updated"], body["unchanged"], body["deleted"]) == (3, 0, 0, 0)
    again = upload(any_api, GOOD_CSV).json()
    assert (again["created"], again["updated"], again["unchanged"]) == (0, 0, 3)
    assert again["version"] == body["version"], "an unchanged import must not bump the version"
    changed = GOOD_CSV.replace(b"SoHo,", b"SoHo Roastery,")
    third = upload(any_api, changed).json()
    assert (third["created"], third["updated"], third["unchanged"]) == (0, 1, 2)
    assert third["version"] == body["version"] + 1


def test_default_radius_is_50_yards(any_api: Api) -> None:
    upload(any_api, GOOD_CSV)
    fence = any_api.client.get("/v1/geofences/s-001", headers=any_api.admin).json()
    assert fence["radius_m"] == 45.72
    assert fence["tags"] == ["downtown", "nyc"]
    assert fence["timezone"] == "America/New_York"
    assert any_api.client.get("/v1/geofences/s-003", headers=any_api.admin).json()["timezone"] == (
        "Pacific/Fiji"
    )


def test_bad_rows_abort_the_whole_import(any_api: Api) -> None:
    upload(any_api, GOOD_CSV)
    bad = (
        b"store_id,name,lat,lng,radius,radius_unit,timezone\n"
        b"n-1,Good one,51.5,-0.12,50,yd,\n"
        b"n-2,Swapped,-73.98,40.74,50,yd,\n"
        b"n-3,Bad unit,51.5,-0.13,50,furlong,\n"
        b"n-1,Duplicate,51.5,-0.14,50,m,\n"
        b"n-5,Bad zone,51.5,-0.15,50,m,Europe/Lundon\n"
    )
    r = upload(any_api, bad)
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "invalid_file"
    lines = {(d["line"], d["field"]) for d in err["details"]}
    assert {3, 4, 5, 6} <= {line for line, _ in lines}
    assert (5, "store_id") in lines
    assert any(d["line"] == 4 and "unit" in d["reason"] for d in err["details"])
    assert any(d["line"] == 6 and d["field"] == "timezone" for d in err["details"])
    assert fence_count(any_api) == 3, "nothing of a bad file may be written"
    assert any_api.client.get("/v1/geofences/n-1", headers=any_api.admin).status_code == 404


def test_on_error_skip_writes_the_good_rows(any_api: Api) -> None:
    bad = b"store_id,name,lat,lng\nok-1,Fine,51.5,-0.12\nbad-1,Broken,abc,-0.12\nok-2,Fine too,51.6,-0.12\n"
    r = upload(any_api, bad, on_error="skip")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["created"] == 2 and body["skipped"] == 1
    assert body["errors"][0]["line"] == 3 and body["errors"][0]["field"] == "lat"


def test_dry_run_writes_nothing(any_api: Api) -> None:
    r = upload(any_api, GOOD_CSV, dry_run="true")
    assert r.status_code == 200 and r.json()["created"] == 3
    assert fence_count(any_api) == 0


def test_replace_deletes_absent_fences(any_api: Api) -> None:
    upload(any_api, GOOD_CSV)
    only_one = b"store_id,name,lat,lng\ns-002,SoHo,40.72335,-74.00299\n"
    body = upload(any_api, only_one, mode="replace").json()
    assert body["deleted"] == 2 and body["updated"] == 1
    assert [
        f["store_id"]
        for f in any_api.client.get("/v1/geofences", headers=any_api.admin).json()["items"]
    ] == ["s-002"]


def test_replace_with_no_valid_rows_is_refused(any_api: Api) -> None:
    upload(any_api, GOOD_CSV)
    r = upload(any_api, b"store_id,name,lat,lng\nx,Bad,999,0\n", mode="replace", on_error="skip")
    assert r.status_code == 422
    assert fence_count(any_api) == 3


def test_whole_file_errors(any_api: Api) -> None:
    for content, needle in [
        (b"", "empty"),
        (b"store_id,name,lat\ns,n,1\n", "lng"),
        ("store_id,name,lat,lng\ns,n,1,2\n".encode("utf-16"), "UTF-16"),
    ]:
        r = upload(any_api, content)
        assert r.status_code == 422, (content, r.text)
        assert needle.lower() in r.text.lower(), r.text


def test_geojson_polygon_import(any_api: Api) -> None:
    doc = b"""{"type": "FeatureCollection", "features": [
      {"type": "Feature", "properties": {"store_id": "mall", "name": "Mall"},
       "geometry": {"type": "Polygon", "coordinates": [[[-74.003, 40.7533], [-74.0011, 40.753],
         [-74.0008, 40.7544], [-74.0027, 40.7547], [-74.003, 40.7533]]]}}]}"""
    r = upload(any_api, doc, name="mall.geojson")
    assert r.status_code == 200, r.text
    fence = any_api.client.get("/v1/geofences/mall", headers=any_api.admin).json()
    assert fence["kind"] == "polygon" and fence["geometry"]["type"] == "Polygon"


def test_list_paging_tag_and_near(any_api: Api) -> None:
    upload(any_api, GOOD_CSV)
    c, h = any_api.client, any_api.admin
    first = c.get("/v1/geofences", params={"limit": 2}, headers=h).json()
    assert [f["store_id"] for f in first["items"]] == ["s-001", "s-002"]
    second = c.get(
        "/v1/geofences", params={"limit": 2, "cursor": first["next_cursor"]}, headers=h
    ).json()
    assert [f["store_id"] for f in second["items"]] == ["s-003"] and second["next_cursor"] is None
    tagged = c.get("/v1/geofences", params={"tag": "downtown"}, headers=h).json()
    assert [f["store_id"] for f in tagged["items"]] == ["s-001", "s-002"]
    near = c.get(
        "/v1/geofences",
        params={"near_lat": 40.7417, "near_lng": -73.9896, "within_m": 5000},
        headers=h,
    ).json()
    assert [f["store_id"] for f in near["items"]] == ["s-001", "s-002"]
    assert near["items"][0]["distance_m"] < near["items"][1]["distance_m"]
    # Across the antimeridian: Suva (178.42 E) is about 167 km from 179.999 W.
    far = c.get(
        "/v1/geofences",
        params={"near_lat": -18.1416, "near_lng": -179.999, "within_m": 200_000},
        headers=h,
    ).json()
    assert [f["store_id"] for f in far["items"]] == ["s-003"]
    assert 160_000 < far["items"][0]["distance_m"] < 175_000
    half = c.get("/v1/geofences", params={"near_lat": 40.0}, headers=h)
    assert half.status_code == 422 and half.json()["error"]["details"][0]["field"] == "near_lng"
    # Without within_m it was a 200 with no items (1 km by default): a radius must be said.
    no_radius = c.get("/v1/geofences", params={"near_lat": 40.74, "near_lng": -73.99}, headers=h)
    assert no_radius.status_code == 422, no_radius.text
    assert [d["field"] for d in no_radius.json()["error"]["details"]] == ["within_m"]
    for bad in ({"tag": "a\x00"}, {"cursor": "c\x00"}):
        assert c.get("/v1/geofences", params=bad, headers=h).status_code == 422
    assert c.get("/v1/geofences/s%00", headers=h).status_code == 422


def test_delete_and_not_found(any_api: Api) -> None:
    upload(any_api, GOOD_CSV)
    c, h = any_api.client, any_api.admin
    assert c.delete("/v1/geofences/s-001", headers=h).status_code == 204
    r = c.delete("/v1/geofences/s-001", headers=h)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert c.get("/v1/geofences/s-001", headers=h).status_code == 404


@pytest.mark.parametrize("route", ["/v1/geofences", "/v1/geofences/s-001"])
def test_admin_routes_need_an_admin_key(api: Api, route: str) -> None:
    c = api.client
    assert c.get(route).status_code == 401
    assert c.get(route, headers={"Authorization": "Bearer nope"}).status_code == 401
    r = c.get(route, headers=api.sdk)
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    assert c.get(route, headers=api.server).status_code == 403


def test_postgis_columns_are_real_spatial_columns(api: Api) -> None:
    upload(api, GOOD_CSV)
    with psycopg.connect(api.settings.database_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT ST_SRID(location), ST_X(location), ST_Y(location), GeometryType(location) "
            "FROM geofences WHERE store_id = 's-001'"
        ).fetchone()
        assert row == (4326, -73.98964, 40.74172, "POINT")
        # An analyst's query: which fences contain this point (sphere, like the service)?
        hits = conn.execute(
            "SELECT store_id FROM geofences WHERE ST_DWithin(location::geography, "
            "ST_SetSRID(ST_MakePoint(-73.98964, 40.7421)::geometry, 4326)::geography, radius_m, false)"
        ).fetchall()
        assert hits == [("s-001",)]
        indexes = {
            r[0]
            for r in conn.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'geofences'")
        }
        assert {"ix_geofences_location_geog", "ix_geofences_shape"} <= indexes
