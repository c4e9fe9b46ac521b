"""The ping endpoints: checks, enter / dwell / exit with hysteresis, retries, batches."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import redis

from geofences import sphere_distance_m
from service.settings import Settings
from tests.helpers import ago, device_key, iso, offset, partition
from tests.service.conftest import Api, _make_api

CENTER = (40.74172, -73.98964)
CSV = b"store_id,name,lat,lng,radius_m\ns-001,Flatiron,40.74172,-73.98964,45.72\ns-002,Far,40.80,-73.90,100\n"


def setup_fences(api: Api) -> None:
    r = api.client.post(
        "/v1/geofences/import", files={"file": ("s.csv", CSV, "text/csv")}, headers=api.admin
    )
    assert r.status_code == 200, r.text


def ping(api: Api, lat: float, lng: float, ts: datetime, **extra: Any) -> dict[str, Any]:
    body = {"device_id": "dev-1", "lat": lat, "lng": lng, "accuracy_m": 5.0, "timestamp": iso(ts)}
    body.update(extra)
    r = api.client.post("/v1/locations", json=body, headers=api.sdk)
    assert r.status_code == 200, r.text
    return r.json()


def kinds(answer: dict[str, Any]) -> list[tuple[str, str]]:
    return [(e["type"], e["store_id"]) for e in answer["events"]]


def test_enter_then_nothing_then_exit(any_api: Api) -> None:
    setup_fences(any_api)
    first = ping(any_api, *CENTER, ago(60))
    assert kinds(first) == [("enter", "s-001")]
    assert first["offer"] is None and first["reason"] == "no_campaign"
    assert first["events"][0]["distance_m"] == 0.0
    second = ping(any_api, *CENTER, ago(50))
    assert second["events"] == [] and second["reason"] == "no_trigger"
    away = ping(any_api, *offset(*CENTER, 90, 45.72 + 10.5), ago(40))
    assert kinds(away) == [("exit", "s-001")]


def test_jitter_at_the_edge_does_not_flap(any_api: Api) -> None:
    setup_fences(any_api)
    seen = []
    # Margin for a 45.72 m circle is max(10 m, 20 %) = 10 m: wobble between r - 1 m and r + 8 m.
    for i, d in enumerate([44.72, 53.72, 44.72, 53.72, 45.0, 55.0, 44.0]):
        seen += kinds(ping(any_api, *offset(*CENTER, 30 * i, d), ago(100 - i)))
    assert seen == [("enter", "s-001")]
    assert kinds(ping(any_api, *offset(*CENTER, 0, 56.0), ago(90))) == [("exit", "s-001")]


def test_dwell_is_sent_once_per_visit(any_api: Api) -> None:
    setup_fences(any_api)
    t0 = ago(1000)
    assert kinds(ping(any_api, *CENTER, t0)) == [("enter", "s-001")]
    assert ping(any_api, *CENTER, t0 + timedelta(seconds=299))["events"] == []
    dwell = ping(any_api, *CENTER, t0 + timedelta(seconds=301))
    assert kinds(dwell) == [("dwell", "s-001")] and dwell["events"][0]["dwell_s"] == 301.0
    assert ping(any_api, *CENTER, t0 + timedelta(seconds=600))["events"] == []


def test_retried_ping_gets_the_first_answer_and_changes_nothing(api: Api) -> None:
    setup_fences(api)
    ts = ago(30)
    first = ping(api, *CENTER, ts, ping_id="p-1")
    r = redis.Redis.from_url(api.settings.redis_url)
    state_key = f"{device_key(api.settings, 'dev-1')}:state"
    before = r.get(state_key)
    # Same ping_id, even with other content: the first answer, no new state.
    again = ping(api, *offset(*CENTER, 0, 500), ts, ping_id="p-1")
    assert again == first
    assert r.get(state_key) == before
    # No ping_id: device + timestamp is the identity.
    t2 = ago(20)
    a = ping(api, *offset(*CENTER, 0, 500), t2)
    b = ping(api, *offset(*CENTER, 0, 500), t2)
    assert a == b and a["ping_id"] and kinds(a) == [("exit", "s-001")]
    keys = [k.decode() for k in r.scan_iter(match=f"{api.settings.redis_prefix}*")]
    keys.remove(
        f"{api.settings.redis_prefix}:{{denials}}:loaded:ev"
    )  # the service's one global key
    # The device's keys, and its event partition's streams (inbox, events): one hash tag.
    tag = f"{api.settings.redis_prefix}:{{ev:{partition(api.settings, 'dev-1')}}}:"
    assert state_key.encode() in r.keys(f"{tag}*"), "the device's keys carry the tag"
    assert keys and all(k.startswith(tag) for k in keys), keys
    r.close()


def test_ping_checks(any_api: Api) -> None:
    setup_fences(any_api)
    low = ping(any_api, *CENTER, ago(100), accuracy_m=150)
    assert low["events"] == [] and low["reason"] == "low_accuracy"
    stale = ping(any_api, *CENTER, ago(400))
    assert stale["reason"] == "out_of_order" and stale["events"] == []
    fresh = ping(any_api, *CENTER, ago(90))
    assert kinds(fresh) == [("enter", "s-001")]
    r = any_api.client.post(
        "/v1/locations",
        json={"device_id": "dev-1", "lat": 1, "lng": 1, "accuracy_m": 5,
              "timestamp": iso(ago(-3600))},
        headers=any_api.sdk,
    )  # fmt: skip
    assert r.status_code == 422 and r.json()["error"]["code"] == "future_ping"


def test_stale_ping_keeps_its_events_but_says_stale(any_api: Api) -> None:
    setup_fences(any_api)
    old = ping(any_api, *CENTER, ago(600), device_id="dev-offline")
    assert kinds(old) == [("enter", "s-001")] and old["reason"] == "stale_ping"


def test_state_older_than_ttl_is_forgotten(any_api: Api) -> None:
    setup_fences(any_api)
    assert kinds(ping(any_api, *CENTER, ago(7 * 3600 + 60))) == [("enter", "s-001")]
    assert kinds(ping(any_api, *CENTER, ago(60))) == [("enter", "s-001")]


def test_bad_pings_are_422_naming_the_field(any_api: Api) -> None:
    c = any_api.client
    for body, field in [
        (
            {"device_id": "d", "lat": 91, "lng": 0, "accuracy_m": 5, "timestamp": iso(ago(1))},
            "body.lat",
        ),
        (
            {
                "device_id": "d",
                "lat": 0,
                "lng": 0,
                "accuracy_m": 5,
                "timestamp": "2026-01-01T00:00:00",
            },
            "body.timestamp",
        ),
        ({"lat": 0, "lng": 0, "accuracy_m": 5, "timestamp": iso(ago(1))}, "body.device_id"),
    ]:
        r = c.post("/v1/locations", json=body, headers=any_api.sdk)
        assert r.status_code == 422, r.text
        assert r.json()["error"]["details"][0]["field"] == field
    assert c.post("/v1/locations", content=b"{not json", headers=any_api.sdk).status_code == 422


def test_locations_auth(api: Api) -> None:
    body = {"device_id": "d", "lat": 0, "lng": 0, "accuracy_m": 5, "timestamp": iso(ago(1))}
    assert api.client.post("/v1/locations", json=body).status_code == 401
    assert api.client.post("/v1/locations", json=body, headers=api.server).status_code == 403
    assert api.client.post("/v1/locations", json=body, headers=api.admin).status_code == 200


def test_batch_runs_in_timestamp_order(any_api: Api) -> None:
    setup_fences(any_api)
    outside = offset(*CENTER, 180, 300)
    pings = [
        {"device_id": "dev-b", "lat": CENTER[0], "lng": CENTER[1], "accuracy_m": 5, "timestamp": iso(ago(40)), "ping_id": "in"},
        {"device_id": "dev-b", "lat": outside[0], "lng": outside[1], "accuracy_m": 5, "timestamp": iso(ago(20)), "ping_id": "out"},
        {"device_id": "dev-b", "lat": outside[0], "lng": outside[1], "accuracy_m": 5, "timestamp": iso(ago(60)), "ping_id": "before"},
    ]  # fmt: skip
    r = any_api.client.post("/v1/locations/batch", json={"pings": pings}, headers=any_api.sdk)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["ping_id"] for x in results] == ["in", "out", "before"]
    assert kinds(results[0]) == [("enter", "s-001")]
    assert kinds(results[1]) == [("exit", "s-001")]
    assert results[2]["events"] == [] and results[2]["reason"] == "no_trigger"
    mixed = [pings[0], {**pings[1], "device_id": "other"}]
    r = any_api.client.post("/v1/locations/batch", json={"pings": mixed}, headers=any_api.sdk)
    assert r.status_code == 422
    too_many = {"pings": [pings[0]] * 101}
    assert (
        any_api.client.post("/v1/locations/batch", json=too_many, headers=any_api.sdk).status_code
        == 422
    )


def test_polygon_fence_enter_and_exit_margin(any_api: Api) -> None:
    doc = b"""{"type": "FeatureCollection", "features": [
      {"type": "Feature", "properties": {"store_id": "mall", "name": "Mall"},
       "geometry": {"type": "Polygon", "coordinates": [[[-74.003, 40.7530], [-74.001, 40.7530],
         [-74.001, 40.7545], [-74.003, 40.7545], [-74.003, 40.7530]]]}}]}"""
    r = any_api.client.post(
        "/v1/geofences/import", files={"file": ("m.geojson", doc, "application/geo+json")},
        headers=any_api.admin,
    )  # fmt: skip
    assert r.status_code == 200, r.text
    entered = ping(any_api, 40.7535, -74.002, ago(50))
    assert kinds(entered) == [("enter", "mall")]
    assert entered["events"][0]["distance_m"] == 0.0  # inside a polygon: 0, not to its centre
    # On the edge counts as inside (ST_Covers); 5 m east of the edge is within the margin.
    lat, lng = offset(40.7535, -74.001, 90, 5)
    assert ping(any_api, lat, lng, ago(40))["events"] == []
    lat, lng = offset(40.7535, -74.001, 90, 60)
    assert kinds(ping(any_api, lat, lng, ago(30))) == [("exit", "mall")]


def test_redis_down_answers_200_without_events(migrated_postgis: str, tmp_path: Any) -> None:
    settings = Settings(database_url=migrated_postgis, redis_url="redis://127.0.0.1:1/0")
    for api in _make_api(settings):
        setup_fences(api)
        answer = ping(api, *CENTER, ago(5))
        assert answer["events"] == [] and answer["reason"] == "state_unavailable"
        ready = api.client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["state"] is False


def test_distance_in_events_is_the_sphere_distance(any_api: Api) -> None:
    setup_fences(any_api)
    lat, lng = offset(*CENTER, 45, 30.0)
    e = ping(any_api, lat, lng, ago(10))["events"][0]
    assert e["distance_m"] == round(sphere_distance_m(*CENTER, lat, lng), 2)


def test_a_flooding_device_gets_429(tmp_path: Any) -> None:
    # A slow refill (one ping per 100 s after a burst of 5) so a loaded CI machine cannot
    # refill the bucket between requests and hide the 429.
    settings = Settings(data_dir=tmp_path / "d", device_rate_per_s=0.01, device_burst=5)
    for any_api in _make_api(settings):
        statuses = []
        for i in range(8):
            body = {
                "device_id": "flood",
                "lat": 1.0,
                "lng": 1.0,
                "accuracy_m": 5,
                "timestamp": iso(ago(30 - i)),
            }
            statuses.append(any_api.client.post("/v1/locations", json=body, headers=any_api.sdk))
        other = {
            "device_id": "calm",
            "lat": 1.0,
            "lng": 1.0,
            "accuracy_m": 5,
            "timestamp": iso(ago(1)),
        }
        assert (
            any_api.client.post("/v1/locations", json=other, headers=any_api.sdk).status_code == 200
        )
    codes = [r.status_code for r in statuses]
    assert codes == [200] * 5 + [429] * 3, codes
    first_429 = statuses[5]
    assert int(first_429.headers["Retry-After"]) >= 1
    limited = first_429.json()["error"]
    assert limited["code"] == "too_many_requests" and "Retry-After" in limited["message"]
