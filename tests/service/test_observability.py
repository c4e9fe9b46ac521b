"""Metrics, JSON logs with request ids, body limits and the per-device limiter."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import REGISTRY, CollectorRegistry

from service.errors import TooManyRequests
from service.http.body_limit import BodyLimitMiddleware
from service.logs import json_handler
from service.metrics import (
    metrics_registry,
    observe_cap_rejection,
    observe_offer,
    observe_ping,
    set_campaigns_version,
    set_index,
    time_import,
)
from service.ratelimit import DeviceRateLimiter, check_device_rate
from tests.helpers import ago, iso
from tests.service.conftest import Api

CSV = b"store_id,name,lat,lng,radius_m\ns-001,Flatiron,40.74172,-73.98964,45\n"
DURATION = "geo_offers_http_request_duration_seconds"
SDK_KEY_LIKE = "go_sdk_" + "A1b2C3d4E5f6G7h8I9j0-_xyz"


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def request_count(method: str, route: str, status: str) -> float:
    return sample(f"{DURATION}_count", method=method, route=route, status=status)


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    """What the app's JSON handler writes, captured from the root logger."""
    stream = io.StringIO()
    handler = json_handler(stream)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield stream
    finally:
        root.removeHandler(handler)


def parsed(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


# --- metrics -------------------------------------------------------------------------------


def test_metrics_label_requests_by_route_template(api: Api) -> None:
    r = api.client.post(
        "/v1/geofences/import", files={"file": ("s.csv", CSV, "text/csv")}, headers=api.admin
    )
    assert r.status_code == 200, r.text
    before = request_count("GET", "/v1/geofences/{store_id}", "4xx")
    assert api.client.get("/v1/geofences/some-id-4711", headers=api.admin).status_code == 404
    assert api.client.get("/v1/geofences/s-001", headers=api.admin).status_code == 200
    assert api.client.get("/no/such/path-4711").status_code == 404
    assert request_count("GET", "/v1/geofences/{store_id}", "4xx") == before + 1

    m = api.client.get("/metrics")
    assert m.status_code == 200
    assert m.headers["content-type"].startswith("text/plain")
    text = m.text
    # No id in any label (numbers elsewhere, e.g. a start time, may contain these digits).
    labels = re.findall(r"\{([^}]*)\}", text)
    assert not [lab for lab in labels if "4711" in lab or "s-001" in lab], labels
    assert (
        f'{DURATION}_bucket{{le="0.0005",method="GET",route="/v1/geofences/{{store_id}}",status="2xx"}}'
        in text
    )
    assert f'{DURATION}_count{{method="GET",route="unmatched",status="4xx"}}' in text
    # Index gauges follow the holder, read at scrape time.
    assert re.search(r"^geo_offers_index_fences 1\.0$", text, re.M)
    assert re.search(r"^geo_offers_index_version [1-9]", text, re.M)


def test_metric_helpers_move_their_series() -> None:
    ping = sample("geo_offers_pings_total", reason="capped")
    offer = sample("geo_offers_offers_total", campaign="c-obs")
    cap = sample("geo_offers_cap_rejections_total", cap="campaign:1/86400s")
    observe_ping("capped")
    observe_offer("c-obs")
    observe_offer("c-obs")
    observe_cap_rejection("campaign:1/86400s")
    assert sample("geo_offers_pings_total", reason="capped") == ping + 1
    assert sample("geo_offers_offers_total", campaign="c-obs") == offer + 2
    assert sample("geo_offers_cap_rejections_total", cap="campaign:1/86400s") == cap + 1

    set_index(1234, 7)
    set_campaigns_version(9)
    assert sample("geo_offers_index_fences") == 1234
    assert sample("geo_offers_index_version") == 7
    assert sample("geo_offers_campaigns_version") == 9

    name = "geo_offers_import_duration_seconds_count"
    ok = sample(name, kind="campaigns", outcome="ok")
    rejected = sample(name, kind="campaigns", outcome="rejected")
    with time_import("campaigns"):
        pass
    with pytest.raises(ValueError), time_import("campaigns"):
        raise ValueError("bad file")
    assert sample(name, kind="campaigns", outcome="ok") == ok + 1
    assert sample(name, kind="campaigns", outcome="rejected") == rejected + 1


def test_multiprocess_mode_exposes_a_fresh_registry(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert metrics_registry() is REGISTRY
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    registry = metrics_registry()
    assert isinstance(registry, CollectorRegistry) and registry is not REGISTRY


# --- request ids and logs -------------------------------------------------------------------


def test_request_id_is_echoed_when_sane_else_generated(embedded_api: Api) -> None:
    client = embedded_api.client
    assert (
        client.get("/healthz", headers={"X-Request-ID": "abc-12.3_X"}).headers["x-request-id"]
        == "abc-12.3_X"
    )
    for bad in ("has space", "x" * 65, "semi;colon", ""):
        got = client.get("/healthz", headers={"X-Request-ID": bad}).headers["x-request-id"]
        assert got != bad and re.fullmatch(r"[0-9a-f]{32}", got)
    first = client.get("/healthz").headers["x-request-id"]
    second = client.get("/healthz").headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", first) and first != second


def test_access_log_is_json_with_route_and_no_secrets(api: Api, log_lines: io.StringIO) -> None:
    r = api.client.get(
        "/v1/geofences",
        params={
            "tag": "secret-tag-value",
            "near_lat": 40.123456,
            "near_lng": -73.654321,
            "within_m": 1000,
        },
        headers={**api.admin, "X-Request-ID": "req-42"},
    )
    assert r.status_code == 200, r.text
    access = [rec for rec in parsed(log_lines) if rec["logger"] == "geo_offers.access"]
    assert len(access) == 1
    line = access[0]
    assert line["request_id"] == "req-42" and line["level"] == "INFO"
    assert line["method"] == "GET" and line["route"] == "/v1/geofences"
    assert line["status"] == 200 and line["duration_ms"] >= 0
    assert "timestamp" in line and line["message"] == "GET /v1/geofences 200"
    client_logs = ("httpx", "httpx2")  # the test client's own lines carry the URL
    raw = "".join(json.dumps(rec) for rec in parsed(log_lines) if rec["logger"] not in client_logs)
    key = api.admin["Authorization"].removeprefix("Bearer ")
    assert "secret-tag-value" not in raw and "40.123456" not in raw and key not in raw


def test_log_filter_rounds_coordinates_and_redacts_keys(log_lines: io.StringIO) -> None:
    logger = logging.getLogger("geo_offers.test")
    logger.warning(
        "bad key %s from device",
        SDK_KEY_LIKE,
        extra={
            "lat": 40.7417234,
            "lng": -73.9896411,
            "header": f"Bearer {SDK_KEY_LIKE.replace('sdk', 'admin')}",
            "ping": {"lat": 1.23456789, "lng": 2.5, "keys": [SDK_KEY_LIKE]},
            "accuracy_m": 5.123456,
        },
    )
    (line,) = parsed(log_lines)
    assert line["message"] == "bad key go_sdk_*** from device"
    assert line["lat"] == 40.742 and line["lng"] == -73.99
    assert line["header"] == "Bearer go_admin_***"
    assert line["ping"] == {"lat": 1.235, "lng": 2.5, "keys": ["go_sdk_***"]}
    assert line["accuracy_m"] == 5.123456  # only coordinates are rounded
    assert line["request_id"] is None and line["logger"] == "geo_offers.test"
    assert "A1b2C3d4" not in log_lines.getvalue()


def test_tracebacks_are_redacted_too(log_lines: io.StringIO) -> None:
    try:
        raise RuntimeError(f"rejected {SDK_KEY_LIKE}")
    except RuntimeError:
        logging.getLogger("geo_offers.test").exception("failed")
    assert "A1b2C3d4" not in log_lines.getvalue()
    assert "go_sdk_***" in parsed(log_lines)[0]["exc_info"]


# --- body limits ----------------------------------------------------------------------------


def big_ping(size: int) -> bytes:
    body = {"device_id": "dev-1", "lat": 40.0, "lng": -73.0, "accuracy_m": 5.0,
            "timestamp": iso(ago(1)), "pad": "x" * size}  # fmt: skip
    return json.dumps(body).encode()


def test_json_body_over_the_limit_is_413(api: Api) -> None:
    before = request_count("POST", "/v1/locations", "4xx")
    headers = {**api.sdk, "Content-Type": "application/json"}
    r = api.client.post("/v1/locations", content=big_ping(2 * 1024 * 1024), headers=headers)
    assert r.status_code == 413
    error = r.json()["error"]
    assert error["code"] == "payload_too_large" and error["details"] == []
    assert "1048576" in error["message"]
    assert r.headers["x-request-id"]
    # Rejected before routing, still timed under its route template.
    assert request_count("POST", "/v1/locations", "4xx") == before + 1

    # No Content-Length (chunked): counted while read.
    body = big_ping(2 * 1024 * 1024)
    chunked = api.client.post("/v1/locations", content=iter([body]), headers=headers)
    assert "content-length" not in chunked.request.headers
    assert chunked.status_code == 413 and chunked.json()["error"]["code"] == "payload_too_large"

    small = api.client.post("/v1/locations", content=big_ping(10), headers=headers)
    assert small.status_code == 200, small.text


def test_upload_of_2_mib_passes_the_size_limit(api: Api) -> None:
    rows = [b"store_id,name,lat,lng,radius_m"]
    name = b"Store " + b"n" * 190  # names are at most 200 characters
    i = 0
    while sum(len(r) + 1 for r in rows) < 2 * 1024 * 1024:
        rows.append(b"s-%05d,%s,40.%05d,-73.98964,50" % (i, name, i))
        i += 1
    csv = b"\n".join(rows) + b"\n"
    assert len(csv) > 2 * 1024 * 1024
    r = api.client.post(
        "/v1/geofences/import",
        params={"dry_run": "true"},
        files={"file": ("big.csv", csv, "text/csv")},
        headers=api.admin,
    )
    assert r.status_code == 200, r.text[:500]


async def _call(
    middleware: BodyLimitMiddleware, chunks: list[bytes], path: str = "/v1/locations"
) -> tuple[int, bytes]:
    scope = {"type": "http", "method": "POST", "path": path, "headers": [], "root_path": ""}
    pending = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
        for i, c in enumerate(chunks)
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return pending.pop(0) if pending else {"type": "http.disconnect"}

    async def send(message: Any) -> None:
        sent.append(message)

    await middleware(scope, receive, send)
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


class _ReadsBody:
    """An app reading the whole body; on any error it answers 400 itself, as FastAPI does."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            more = True
            while more:
                message = await receive()
                more = message.get("more_body", False)
            status = 200
        except Exception:
            status = 400
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"done"})


@pytest.mark.anyio
async def test_streamed_body_is_counted_chunk_by_chunk() -> None:
    middleware = BodyLimitMiddleware(_ReadsBody(), max_body_bytes=4096, max_upload_bytes=65536)
    assert await _call(middleware, [b"x" * 1024] * 4) == (200, b"done")
    status, body = await _call(middleware, [b"x" * 1024] * 5)
    assert status == 413 and json.loads(body)["error"]["code"] == "payload_too_large"
    assert (await _call(middleware, [b"x" * 1024] * 20, path="/v1/campaigns/import"))[0] == 200
    assert (await _call(middleware, [b"x" * 1024] * 65, path="/v1/geofences/import"))[0] == 413


# --- per-device limiter ---------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_device_limiter_burst_then_429_then_refill() -> None:
    clock = Clock()
    state = SimpleNamespace(device_limiter=DeviceRateLimiter(5.0, 20, clock=clock))
    for _ in range(20):
        check_device_rate(state, "dev-1")
    with pytest.raises(TooManyRequests) as caught:
        check_device_rate(state, "dev-1")
    assert caught.value.status_code == 429 and "Retry-After: 1 s" in caught.value.message
    check_device_rate(state, "dev-2")  # other devices have their own bucket

    clock.now += 0.2  # one token at 5/s
    check_device_rate(state, "dev-1")
    with pytest.raises(TooManyRequests):
        check_device_rate(state, "dev-1")
    clock.now += 4.0  # back to a full burst
    for _ in range(20):
        check_device_rate(state, "dev-1")
    with pytest.raises(TooManyRequests):
        check_device_rate(state, "dev-1")


def test_device_limiter_memory_is_bounded() -> None:
    clock = Clock()
    limiter = DeviceRateLimiter(5.0, 20, clock=clock, max_devices=100)
    for i in range(1000):
        limiter.acquire(f"dev-{i}")
    assert len(limiter) <= 100
    clock.now += 4.0  # every bucket is full again: nothing worth keeping
    limiter.acquire("late")
    assert len(limiter) == 1


def test_device_limiter_off_and_absent() -> None:
    off = SimpleNamespace(device_limiter=DeviceRateLimiter(0.0, 1))
    for _ in range(100):
        check_device_rate(off, "dev-1")
    check_device_rate(SimpleNamespace(), "dev-1")


def test_the_app_has_a_limiter_from_settings(embedded_api: Api) -> None:
    limiter = embedded_api.app_state.device_limiter
    assert limiter.rate_per_s == embedded_api.settings.device_rate_per_s == 5.0
    assert limiter.burst == embedded_api.settings.device_burst == 20
