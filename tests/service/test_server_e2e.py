"""End to end through real processes: the CLI, two uvicorn replicas, PostGIS and Redis."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.settings import Settings
from tests.helpers import ago, iso, offset
from tests.service.conftest import _reset_postgis

BIN = Path(sys.executable).parent / "geo-offers"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def server_env(pg_settings: Settings, migrated_postgis: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GEO_OFFERS_")}
    env.update(
        GEO_OFFERS_DATABASE_URL=migrated_postgis,
        GEO_OFFERS_REDIS_URL=pg_settings.redis_url or "",
        GEO_OFFERS_REDIS_PREFIX=pg_settings.redis_prefix,
        GEO_OFFERS_INDEX_POLL_S="0.5",
        # These tests fire bursts for one device on purpose; flood control has its own test.
        GEO_OFFERS_DEVICE_BURST="1000",
    )
    return env


def start_server(env: dict[str, str], tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    log = (tmp / f"server-{port}.log").open("wb")
    proc = subprocess.Popen(
        [str(BIN), "serve", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError((tmp / f"server-{port}.log").read_text())
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise AssertionError("server did not become ready: " + (tmp / f"server-{port}.log").read_text())


@pytest.fixture
def two_servers(server_env: dict[str, str], tmp_path: Path) -> Iterator[list[str]]:
    procs = []
    try:
        urls = []
        for _ in range(2):
            proc, url = start_server(server_env, tmp_path)
            procs.append(proc)
            urls.append(url)
        yield urls
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN), *args], env=env, capture_output=True, text=True, timeout=60)


def test_cli_import_and_pings_across_two_replicas(
    two_servers: list[str], server_env: dict[str, str], tmp_path: Path
) -> None:
    a, b = two_servers
    created = cli(server_env, "keys", "create", "--role", "admin")
    assert created.returncode == 0, created.stderr
    admin = created.stdout.strip()
    assert admin.startswith("go_admin_") and "\n" not in admin, "the key alone on stdout"
    sdk = cli(server_env, "keys", "create", "--role", "sdk").stdout.strip()

    stores = tmp_path / "stores.csv"
    stores.write_text(
        "store_id,name,lat,lng,radius,radius_unit\n"
        "e2e-1,Dateline,-16.79,179.9999,100,m\n"
        "e2e-2,Pole,89.99,0,1,km\n"
    )
    up = cli(server_env, "import", "geofences", str(stores), "--url", a, "--key", admin)
    assert up.returncode == 0, up.stderr
    assert '"created": 2' in up.stdout
    assert "uploading stores.csv" in up.stderr, "a progress bar on stderr"

    # The other replica follows within its polling period (well under 5 s).
    headers = {"Authorization": f"Bearer {sdk}"}
    lat, lng = offset(-16.79, 179.9999, 90, 50)  # 50 m east: across the antimeridian
    assert lng < 0
    deadline = time.monotonic() + 5
    while True:
        # Wall time moves on between tries, so each try is a new, later ping.
        body = {"device_id": "e2e-dev", "lat": lat, "lng": lng, "accuracy_m": 5,
                "timestamp": iso(ago(30))}  # fmt: skip
        answer = httpx.post(f"{b}/v1/locations", json=body, headers=headers).json()
        if answer["events"] or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    assert [(e["type"], e["store_id"]) for e in answer["events"]] == [("enter", "e2e-1")]

    bad = tmp_path / "bad.csv"
    bad.write_text("store_id,name,lat,lng\nx,Bad,123,45\n")
    failed = cli(server_env, "import", "geofences", str(bad), "--url", a, "--key", admin)
    assert failed.returncode != 0 and "422" in failed.stderr
    assert '"line": 2' in failed.stdout


def test_concurrent_pings_for_one_device_enter_once(
    two_servers: list[str], server_env: dict[str, str], tmp_path: Path, migrated_postgis: str
) -> None:
    a, b = two_servers
    admin = cli(server_env, "keys", "create", "--role", "admin").stdout.strip()
    sdk = cli(server_env, "keys", "create", "--role", "sdk").stdout.strip()
    r = httpx.post(
        f"{a}/v1/geofences/import",
        files={"file": ("s.csv", b"store_id,name,lat,lng\nc-1,Cafe,48.8593,2.3618\n")},
        headers={"Authorization": f"Bearer {admin}"},
    )
    assert r.status_code == 200, r.text
    deadline = time.monotonic() + 5
    while httpx.get(f"{b}/readyz").json()["index"]["fences"] != 1:
        assert time.monotonic() < deadline, "replica b never saw the import"
        time.sleep(0.1)

    headers = {"Authorization": f"Bearer {sdk}"}

    async def fire() -> list[dict]:
        async with httpx.AsyncClient(timeout=30) as client:
            # 40 retries of one ping and 40 distinct pings, spread over both replicas.
            same = {"device_id": "hot", "lat": 48.8593, "lng": 2.3618, "accuracy_m": 5,
                    "timestamp": iso(ago(60)), "ping_id": "dup"}  # fmt: skip
            reqs = [
                client.post(f"{(a, b)[i % 2]}/v1/locations", json=same, headers=headers)
                for i in range(40)
            ]
            for i in range(40):
                other = {**same, "ping_id": f"p-{i}", "timestamp": iso(ago(50 - i / 10))}
                reqs.append(
                    client.post(f"{(a, b)[i % 2]}/v1/locations", json=other, headers=headers)
                )
            resps = await asyncio.gather(*reqs)
        assert all(r.status_code == 200 for r in resps), [
            r.text for r in resps if r.status_code != 200
        ]
        return [r.json() for r in resps]

    answers = asyncio.run(fire())
    dup = answers[:40]
    assert all(x == dup[0] for x in dup), "every retry gets the first answer"
    distinct = [dup[0], *answers[40:]]  # the retries are one ping
    enters = [e for x in distinct for e in x["events"] if e["type"] == "enter"]
    assert len(enters) == 1, distinct
    assert not [e for x in distinct for e in x["events"] if e["type"] == "exit"]
    _reset_postgis(migrated_postgis)


CAMPAIGNS = b"""
campaigns:
  - id: once-a-day
    # One user on many devices at once is a shared account (DESIGN 11): this campaign
    # opts out of trust, the subject here is the cap's atomicity.
    trust_checks: false
    trigger: {type: enter}
    targeting: {store_ids: [cap-store]}
    caps: [{count: 1, window: 24h}]
    offer: {title: One a day, message: "Hi {{ first_name | default: 'there' }}", coupon: {type: unique, prefix: DAY-}}
  - id: fifty-only
    trigger: {type: enter}
    targeting: {store_ids: [budget-store]}
    budget: {total: 50}
    offer: {title: First fifty, message: "Quick!", coupon: {type: unique}}
"""


def test_caps_budgets_and_redemptions_hold_across_two_replicas(
    two_servers: list[str], server_env: dict[str, str]
) -> None:
    a, b = two_servers
    admin = {
        "Authorization": f"Bearer {cli(server_env, 'keys', 'create', '--role', 'admin').stdout.strip()}"
    }
    sdk = {
        "Authorization": f"Bearer {cli(server_env, 'keys', 'create', '--role', 'sdk').stdout.strip()}"
    }
    server = {
        "Authorization": f"Bearer {cli(server_env, 'keys', 'create', '--role', 'server').stdout.strip()}"
    }
    stores = b"store_id,name,lat,lng\ncap-store,Cap,48.8593,2.3618\nbudget-store,Budget,51.5308,-0.1236\n"
    assert (
        httpx.post(
            f"{a}/v1/geofences/import", files={"file": ("s.csv", stores)}, headers=admin
        ).status_code
        == 200
    )
    r = httpx.post(f"{a}/v1/campaigns/import", files={"file": ("c.yaml", CAMPAIGNS)}, headers=admin)
    assert r.status_code == 200, r.text
    deadline = time.monotonic() + 5
    while httpx.get(f"{b}/readyz").json()["index"]["fences"] != 2:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    time.sleep(1.2)  # campaigns follow on the same polling period

    async def burst() -> tuple[list[dict], list[dict]]:
        async with httpx.AsyncClient(
            timeout=60, limits=httpx.Limits(max_connections=200)
        ) as client:
            ts = iso(ago(3))
            capped = [
                client.post(f"{(a, b)[i % 2]}/v1/locations", headers=sdk, json={
                    "device_id": f"phone-{i}", "user_id": "hot-user", "lat": 48.8593, "lng": 2.3618,
                    "accuracy_m": 5, "timestamp": ts})
                for i in range(100)
            ]  # fmt: skip
            budget = [
                client.post(f"{(a, b)[i % 2]}/v1/locations", headers=sdk, json={
                    "device_id": f"shopper-{i}", "user_id": f"shopper-{i}", "lat": 51.5308,
                    "lng": -0.1236, "accuracy_m": 5, "timestamp": ts})
                for i in range(200)
            ]  # fmt: skip
            r1 = await asyncio.gather(*capped)
            r2 = await asyncio.gather(*budget)
        assert all(r.status_code == 200 for r in [*r1, *r2]), [
            r.text for r in [*r1, *r2] if r.status_code != 200
        ][:3]
        return [r.json() for r in r1], [r.json() for r in r2]

    capped, budget = asyncio.run(burst())
    assert sum(1 for x in capped if x["offer"]) == 1, {x["reason"] for x in capped}
    assert {x["reason"] for x in capped} == {"offer_issued", "capped"}
    assert sum(1 for x in budget if x["offer"]) == 50
    assert {x["reason"] for x in budget} == {"offer_issued", "budget_exhausted"}
    report = httpx.get(f"{b}/v1/campaigns/fifty-only/report", headers=admin).json()
    assert report["arms"]["treatment"]["issued"] == 50

    code = next(x["offer"]["coupon_code"] for x in capped if x["offer"])

    async def tills() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30) as client:
            return await asyncio.gather(*[
                client.post(f"{(a, b)[i % 2]}/v1/redemptions", headers=server, json={"coupon_code": code, "store_id": "cap-store"})
                for i in range(20)
            ])  # fmt: skip

    statuses = sorted(r.status_code for r in asyncio.run(tills()))
    assert statuses == [200] + [409] * 19
