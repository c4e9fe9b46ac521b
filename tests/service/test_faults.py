"""Faults: a Redis and a PostgreSQL of the test's own stopped and restarted under traffic.

The machine's shared servers are never touched. The PostgreSQL is ``initdb``-ed into a
temporary directory (as the ``postgres`` system user when run as root, since PostgreSQL
refuses root) and uses the machine's PostGIS.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis

from service.settings import Settings
from tests.helpers import ago, iso
from tests.service.conftest import Api, _make_api, _reset_postgis


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
    if shutil.which("redis-server") is None:
        pytest.skip("needs redis-server")
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


def _setup(api: Api) -> None:
    """One store, one campaign that offers on every enter, and a first offer to prove it."""
    stores = b"store_id,name,lat,lng\nf-1,Cafe,48.8593,2.3618\n"
    h = api.admin
    assert (
        api.client.post(
            "/v1/geofences/import", files={"file": ("s.csv", stores)}, headers=h
        ).status_code
        == 200
    )
    assert (
        api.client.post(
            "/v1/campaigns/import", files={"file": ("c.yaml", CAMPAIGN)}, headers=h
        ).status_code
        == 200
    )
    assert _ping(api, "before")["reason"] == "offer_issued"


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
        c = api.client
        _setup(api)

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


# -- a PostgreSQL of our own ----------------------------------------------------------

BIN = Path("/usr/lib/postgresql/15/bin")


def _runner() -> list[str]:
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("running as root without a postgres system user")
    return ["runuser", "-u", "postgres", "--"]


class OwnPostgres:
    def __init__(self, tmp: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.dir = tmp / "pg"
        self.run = _runner()

    def _pg_ctl(self, *args: str) -> None:
        subprocess.run(
            [*self.run, str(BIN / "pg_ctl"), "-D", str(self.dir), "-w", "-t", "30", *args],
            check=True, capture_output=True,
        )  # fmt: skip

    def init(self) -> None:
        self.dir.mkdir()
        if self.run:
            shutil.chown(self.dir.parent, "postgres", "postgres")
            shutil.chown(self.dir, "postgres", "postgres")
        subprocess.run(
            [*self.run, str(BIN / "initdb"), "-D", str(self.dir), "-A", "trust", "-U", "postgres"],
            check=True, capture_output=True,
        )  # fmt: skip

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._pg_ctl("-o", opts, "-l", str(self.dir / "log"), "start")

    def stop(self) -> None:
        self._pg_ctl("-m", "fast", "stop")

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"


@pytest.fixture
def own_postgres() -> Iterator[OwnPostgres]:
    if not (BIN / "initdb").exists():
        pytest.skip("PostgreSQL 15 server binaries not found")
    # Not pytest's tmp_path: its parents are private to root, and the server runs as postgres.
    tmp = Path(tempfile.mkdtemp(prefix="geo-offers-pg-"))
    pg = OwnPostgres(tmp)
    pg.init()
    pg.start()
    with psycopg.connect(pg.url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION postgis")
    try:
        yield pg
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            pg.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def test_database_down_pings_keep_matching_and_offers_fail_closed(
    own_postgres: OwnPostgres, redis_url: str, redis_prefix: str
) -> None:
    settings = Settings(
        database_url=own_postgres.url, redis_url=redis_url, redis_prefix=redis_prefix
    )
    for api in _make_api(settings):
        c, h = api.client, api.admin
        _setup(api)

        own_postgres.stop()
        during = _ping(api, "during")
        assert [e["type"] for e in during["events"]] == ["enter"], "matching goes on from the index"
        assert during["offer"] is None and during["reason"] == "unavailable"
        listing = c.get("/v1/geofences", headers=h)
        assert listing.status_code == 503 and listing.json()["error"]["code"] == "unavailable"
        ready = c.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["database"] is False

        own_postgres.start()
        deadline = time.monotonic() + 15
        while True:
            answer = _ping(api, f"after-{time.monotonic()}")
            if answer["reason"] == "offer_issued" or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert answer["reason"] == "offer_issued", answer
        assert c.get("/readyz").status_code == 200
