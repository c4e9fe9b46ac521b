"""A worker killed (SIGKILL) in the middle of an offer burst loses no coupon and gives none
twice: a real ``geo-offers serve`` on PostGIS and Redis, killed while hundreds of offers are
in flight, then restarted and every ping retried."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg
import redis

from service.settings import Settings
from tests.helpers import ago, iso
from tests.service.test_server_e2e import cli, server_env, start_server

__all__ = ["server_env"]  # the fixture, used by name below

CAMPAIGNS = b"""
policies:
  caps: [{count: 1000, window: 24h}]
campaigns:
  - id: burst
    trigger: {type: enter}
    caps: [{count: 1000, window: 24h}]
    budget: {total: 1000000}
    offer: {title: Welcome, message: "Hi {{ first_name | default: 'there' }}",
            coupon: {type: unique, prefix: K-}}
"""
N = 600


def _body(i: int, ts: str) -> dict[str, Any]:
    return {"device_id": f"burst-{i}", "user_id": f"burst-user-{i}", "lat": 48.8593,
            "lng": 2.3618, "accuracy_m": 5, "timestamp": ts, "ping_id": f"burst-ping-{i}"}  # fmt: skip


async def _fire(url: str, key: str, bodies: list[dict[str, Any]], kill: Any = None) -> list[Any]:
    """Send every body at once; ``kill`` runs once a tenth of the answers are in."""
    headers = {"Authorization": f"Bearer {key}"}
    answered = 0
    limits = httpx.Limits(max_connections=64)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:

        async def one(body: dict[str, Any]) -> Any:
            nonlocal answered
            try:
                r = await client.post(f"{url}/v1/locations", json=body, headers=headers)
            except httpx.HTTPError:
                return None  # the worker died under this request: the client got nothing
            answered += 1
            if kill is not None and answered == len(bodies) // 10:
                kill()
            assert r.status_code == 200, r.text
            return r.json()

        return list(await asyncio.gather(*(one(b) for b in bodies)))


def test_sigkill_during_an_offer_burst_loses_and_duplicates_nothing(
    server_env: dict[str, str], pg_settings: Settings, migrated_postgis: str, tmp_path: Path
) -> None:
    env = {**server_env, "GEO_OFFERS_DEVICE_BURST": "100000"}
    proc, url = start_server(env, tmp_path)
    try:
        admin = cli(env, "keys", "create", "--role", "admin").stdout.strip()
        sdk = cli(env, "keys", "create", "--role", "sdk").stdout.strip()
        h = {"Authorization": f"Bearer {admin}"}
        stores = b"store_id,name,lat,lng\nk-1,Cafe,48.8593,2.3618\n"
        r = httpx.post(f"{url}/v1/geofences/import", files={"file": ("s.csv", stores)}, headers=h)
        assert r.status_code == 200, r.text
        r = httpx.post(
            f"{url}/v1/campaigns/import", files={"file": ("c.yaml", CAMPAIGNS)}, headers=h
        )
        assert r.status_code == 200, r.text

        bodies = [_body(i, iso(ago(5))) for i in range(N)]
        killed: list[float] = []

        def kill() -> None:
            os.kill(proc.pid, signal.SIGKILL)
            killed.append(time.monotonic())

        first = asyncio.run(_fire(url, sdk, bodies, kill))
        proc.wait(10)
        assert killed and proc.returncode == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)

    received = {
        b["ping_id"]: a["offer"] for b, a in zip(bodies, first, strict=True) if a and a["offer"]
    }
    lost = sum(1 for a in first if a is None)
    assert received and lost, f"the kill should land mid-burst: {len(received)} offers, {lost} lost"

    with psycopg.connect(migrated_postgis, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT ping_id, offer_id, coupon_code, user_key FROM offers WHERE campaign_id = 'burst'"
        ).fetchall()
    by_ping = {p: (oid, code, user) for p, oid, code, user in rows}
    assert len(by_ping) == len(rows), "one row per ping"
    # Every coupon a client received is in the database.
    for pid, offer in received.items():
        assert by_ping[pid][:2] == (offer["offer_id"], offer["coupon_code"]), pid
    # No coupon row whose caps and budget were given back.
    with redis.Redis.from_url(pg_settings.redis_url or "") as rc:
        prefix = pg_settings.redis_prefix
        for _, (oid, _, user) in by_ping.items():
            assert rc.zscore(f"{prefix}:{{u:{user}}}:all", oid) is not None, oid
            assert rc.zscore(f"{prefix}:{{u:{user}}}:c:burst", oid) is not None, oid
            assert rc.exists(f"{prefix}:{{c:burst}}:i:{oid}"), oid
        assert int(rc.get(f"{prefix}:{{c:burst}}:total") or 0) >= len(rows)

    # Restarted, every ping retried: the same coupon or none, never a second one.
    proc, url = start_server(env, tmp_path)
    try:
        again = asyncio.run(_fire(url, sdk, bodies))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
    with psycopg.connect(migrated_postgis, autocommit=True) as conn:
        after = conn.execute(
            "SELECT ping_id, coupon_code FROM offers WHERE campaign_id = 'burst'"
        ).fetchall()
    codes = dict(after)
    assert len(codes) == len(after)
    for body, answer in zip(bodies, again, strict=True):
        assert answer is not None
        pid, offer = body["ping_id"], answer["offer"]
        if pid in received:
            assert offer is not None and offer["coupon_code"] == received[pid]["coupon_code"]
        if offer is not None:
            assert codes[pid] == offer["coupon_code"], "answered coupons are stored"
            if pid in by_ping:
                assert offer["coupon_code"] == by_ping[pid][1], "never a second coupon"
    # Every device has at most one coupon.
    assert len({p for p, _ in after}) == len(after) <= N
