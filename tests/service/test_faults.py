"""Faults: a Redis of our own stopped and restarted under traffic (never the shared one)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from service.settings import Settings
from tests.helpers import ago, iso
from tests.service.conftest import Api, _make_api, _reset_postgis

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OwnRedis:
    def __init__(self, tmp: Path) -> None:
        self.port = _port()
        self.tmp = tmp
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.tmp)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if redis.Redis(port=self.port, socket_connect_timeout=0.2).ping():
                    return
            except redis.RedisError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    r = OwnRedis(tmp_path)
    r.start()
    try:
        yield r
    finally:
        r.stop()


CAMPAIGN = b"""campaigns:
  - id: hello
    trigger: {type: enter}
    offer: {title: Hello, message: "Hi {{ first_name | default: 'there' }}"}
"""


def _ping(api: Api, device: str) -> dict:
    body = {
        "device_id": device,
        "lat": 48.8593,
        "lng": 2.3618,
        "accuracy_m": 5,
        "timestamp": iso(ago(1)),
    }
    r = api.client.post("/v1/locations", json=body, headers=api.sdk)
    assert r.status_code == 200, r.text
    return r.json()


def test_redis_stopped_and_restarted_under_traffic(
    own_redis: OwnRedis, migrated_postgis: str
) -> None:
    _reset_postgis(migrated_postgis)
    settings = Settings(
        database_url=migrated_postgis, redis_url=own_redis.url, redis_prefix="faults"
    )
    for api in _make_api(settings):
        c, h = api.client, api.admin
        assert (
            c.post(
                "/v1/geofences/import",
                files={"file": ("s.csv", b"store_id,name,lat,lng\nf-1,Cafe,48.8593,2.3618\n")},
                headers=h,
            ).status_code
            == 200
        )
        assert (
            c.post(
                "/v1/campaigns/import", files={"file": ("c.yaml", CAMPAIGN)}, headers=h
            ).status_code
            == 200
        )
        assert _ping(api, "before")["reason"] == "offer_issued"

        own_redis.stop()
        during = [_ping(api, f"during-{i}") for i in range(5)]
        assert {d["reason"] for d in during} == {"state_unavailable"}
        assert all(d["offer"] is None for d in during)
        assert c.get("/readyz").status_code == 503

        own_redis.start()  # same port, empty: the service must find it again by itself
        deadline = time.monotonic() + 10
        while True:
            answer = _ping(api, f"after-{time.monotonic()}")
            if answer["reason"] == "offer_issued" or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert answer["reason"] == "offer_issued", answer
        assert c.get("/readyz").status_code == 200
    _reset_postgis(migrated_postgis)
