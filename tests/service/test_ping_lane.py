"""The ping lane (pure ASGI, before FastAPI's routing) answers exactly as the routed
endpoints do, errors included; and it carries request ids, route labels and body limits."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.auth import Role, create_key
from service.locations.router import PingLane
from service.logs import json_handler
from service.settings import Settings
from tests.helpers import ago, iso
from tests.service.conftest import _reset_postgis

CSV = b"store_id,name,lat,lng,radius_m\ns-001,Flatiron,40.74172,-73.98964,45.72\n"


@contextlib.contextmanager
def _client(settings: Settings, lane: bool) -> Iterator[tuple[TestClient, dict[Role, str]]]:
    app = create_app(settings)
    assert isinstance(app.ping_lane, PingLane)
    if not lane:
        app.ping_lane = None
    with TestClient(app) as client:
        keys = {r: create_key(app.state.engine, r, "t") for r in Role}
        admin = {"Authorization": f"Bearer {keys[Role.admin]}"}
        r = client.post("/v1/geofences/import", files={"file": ("s.csv", CSV)}, headers=admin)
        assert r.status_code == 200, r.text
        yield client, keys


@pytest.fixture(params=[True, False], ids=["lane", "routed"])
def client(request: pytest.FixtureRequest, pg_settings: Settings):
    with _client(pg_settings, request.param) as c:
        yield c


def _norm(doc: Any) -> Any:
    """Drop what differs by design between two runs (ids, codes, times)."""
    text = re.sub(r'"(ping_id|offer_id|coupon_code|expires_at)":"[^"]*"', r'"\1":"x"', doc)
    return re.sub(r"is \d+ s ahead", "is N s ahead", text)


def _conversation(client: TestClient, keys: dict[Role, str]) -> list[tuple[int, str, str]]:
    sdk = {"Authorization": f"Bearer {keys[Role.sdk]}"}
    server = {"Authorization": f"Bearer {keys[Role.server]}"}
    admin = {"Authorization": f"Bearer {keys[Role.admin]}"}
    ping = {"device_id": "d1", "lat": 40.74172, "lng": -73.98964, "accuracy_m": 5}
    calls: list[tuple[str, dict[str, str], Any, str]] = [
        ("/v1/locations", sdk, {**ping, "timestamp": iso(ago(60)), "ping_id": "p1"}, ""),
        ("/v1/locations", sdk, {**ping, "timestamp": iso(ago(60)), "ping_id": "p1"}, ""),  # retry
        ("/v1/locations", sdk, {**ping, "timestamp": iso(ago(50))}, "?explain=true"),  # 403
        ("/v1/locations", admin, {**ping, "timestamp": iso(ago(40))}, "?explain=true"),
        ("/v1/locations", server, {**ping, "timestamp": iso(ago(30))}, ""),  # 403 role
        ("/v1/locations", {}, {**ping, "timestamp": iso(ago(30))}, ""),  # 401
        ("/v1/locations", {"Authorization": "Bearer nope"}, ping, ""),  # 401 unknown key
        ("/v1/locations", sdk, {**ping, "lat": 91, "timestamp": "yesterday"}, ""),  # 422
        ("/v1/locations", sdk, b"{not json", ""),  # 422
        ("/v1/locations", sdk, {**ping, "timestamp": "2999-01-01T00:00:00Z"}, ""),  # future
        ("/v1/locations/batch", sdk, {"pings": [{**ping, "timestamp": iso(ago(20))}]}, ""),
        ("/v1/locations/batch", sdk, {"pings": []}, ""),  # 422
    ]
    out = []
    for path, headers, body, query in calls:
        raw = body if isinstance(body, bytes) else None
        r = client.post(path + query, headers=headers, content=raw, json=None if raw else body)
        assert r.status_code < 500, r.text
        assert r.headers["content-type"] == "application/json"
        assert re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"])
        out.append((r.status_code, r.headers.get("www-authenticate", ""), _norm(r.text)))
    return out


def test_lane_answers_as_the_routed_endpoints(pg_settings: Settings) -> None:
    with _client(pg_settings, True) as (c, keys):
        with_lane = _conversation(c, keys)
    # The same story from scratch: a new key prefix in Redis, an emptied database.
    routed_settings = pg_settings.model_copy(
        update={"redis_prefix": pg_settings.redis_prefix + "r"}
    )
    _reset_postgis(pg_settings.database_url or "")
    with _client(routed_settings, False) as (c, keys):
        routed = _conversation(c, keys)
    assert [s for s, _, _ in with_lane] == [
        200,
        200,
        403,
        200,
        403,
        401,
        401,
        422,
        422,
        422,
        200,
        422,
    ]
    assert with_lane == routed


def test_lane_labels_routes_and_keeps_body_limits(
    client: tuple[TestClient, dict[Role, str]],
) -> None:
    c, keys = client
    sdk = {"Authorization": f"Bearer {keys[Role.sdk]}"}
    big = b'{"device_id":"' + b"x" * 1_100_000 + b'"}'
    r = c.post("/v1/locations", headers=sdk, content=big)
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
    r = c.get("/v1/locations", headers=sdk)  # other methods go on to FastAPI
    assert r.status_code == 405
    metrics = c.get("/metrics").text
    assert 'route="/v1/locations",status="4xx"' in metrics
    assert "unmatched" not in "".join(
        line for line in metrics.splitlines() if "POST" in line and "/v1/locations" in line
    )


def test_a_bug_is_a_500_in_the_error_shape_with_a_request_id(
    pg_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the lane and through the routed endpoint (the middleware stack) alike: one
    error log line carrying the request id, and the id in the 500's headers."""

    async def broken(*args: Any) -> bytes:
        raise RuntimeError("a bug")

    monkeypatch.setattr("service.locations.router.answer_ping", broken)
    for lane in (True, False):
        app = create_app(pg_settings)
        if not lane:
            app.ping_lane = None
        out = io.StringIO()
        handler = json_handler(out)  # the service's JSON log format
        logging.getLogger().addHandler(handler)
        try:
            with TestClient(app, raise_server_exceptions=False) as c:
                r = c.post("/v1/locations", json={}, headers={"X-Request-ID": "req-500"})
        finally:
            logging.getLogger().removeHandler(handler)
        assert r.status_code == 500, (lane, r.text)
        assert r.json()["error"]["code"] == "internal_error"
        assert r.headers["x-request-id"] == "req-500"
        lines = [json.loads(line) for line in out.getvalue().splitlines()]
        logged = [d["request_id"] for d in lines if d["message"] == "unhandled error"]
        assert logged == ["req-500"], lane
