"""Webhook delivery throughput of one process, beside the bare HTTP rate to the same receiver.

Records N events in the log of a fresh PostGIS database, starts the relay (fan-out and one
endpoint worker, as the service runs them) and times until every event is delivered to a
local receiver (uvicorn, a raw ASGI app answering 204). The reference, in the same run: the
same number of signed POSTs sent by httpx at the same concurrency with no database at all.

    .venv/bin/python benchmarks/bench_events.py --events 5000 --concurrency 4,16

With ``--inbox N``: the relay's import instead — N visit events XADDed to the inbox
streams (64 partitions, a fresh key prefix in ``--redis-url``) as the device-state script
does, then the relay (import, stream relay, fan-out; no endpoint) timed until every event
is in the log, fanned out and in the public streams.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
import redis.asyncio as aioredis
from sqlalchemy import text

from service.db.engine import make_engine
from service.db.migrate import upgrade
from service.events import log as event_log
from service.events.relay import EventRelay
from service.events.streams import INBOX_XADD_LUA, EventStreams, StreamLayout, inbox_args
from service.events.types import visit_event
from service.settings import Settings
from service.webhooks.service import create_endpoint
from service.webhooks.signing import new_secret, signed_headers


async def receiver(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The receiver: reads the body, answers 204."""
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_receiver() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "uvicorn", "--app-dir", str(Path(__file__).parent),
            "bench_events:receiver", "--port", str(port), "--no-access-log", "--log-level",
            "warning",
        ],
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/hook"
    for _ in range(100):
        try:
            httpx.post(url, content=b"{}")
            return proc, url
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("the receiver did not start")


async def bare_rate(url: str, n: int, concurrency: int) -> float:
    """Signed POSTs per second straight from httpx (the ceiling of one client here)."""
    secret = new_secret()
    body = b'{"id": "evt_x", "type": "visit.entered", "occurred_at": "", "data": {}}'
    sem = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits) as client:

        async def one(i: int) -> None:
            async with sem:
                headers = signed_headers(f"evt_{i}", int(time.time()), body, [secret])
                r = await client.post(url, content=body, headers=headers)
                assert r.status_code == 204

        start = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        return n / (time.perf_counter() - start)


async def relay_rate(settings: Settings, url: str, n: int, concurrency: int) -> tuple[float, float]:
    engine = make_engine(settings)
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE events, webhook_endpoints, webhook_deliveries"))
    create_endpoint(engine, url, None, None)
    now = datetime.now(UTC)
    events = [
        visit_event("enter", device_id=f"d-{i}", user_id=None, store_id="s", ping_key=f"p-{i}",
                    occurred_at=now)
        for i in range(n)
    ]  # fmt: skip
    start = time.perf_counter()
    with engine.begin() as conn:
        for i in range(0, n, 1000):
            event_log.record(conn, events[i : i + 1000])
    recorded = time.perf_counter() - start
    relay = EventRelay(
        engine, settings.model_copy(update={"webhook_concurrency": concurrency}), None
    )
    start = time.perf_counter()
    await relay.start()
    try:
        while True:
            await asyncio.sleep(0.05)
            with engine.connect() as conn:
                left = conn.execute(
                    text(
                        "SELECT (SELECT count(*) FROM webhook_deliveries"
                        "        WHERE status <> 'delivered')"
                        " + (SELECT count(*) FROM events WHERE NOT fanned_out)"
                    )
                ).scalar_one()
            if left == 0:
                break
        elapsed = time.perf_counter() - start
    finally:
        await relay.stop()
        engine.dispose()
    return n / elapsed, n / recorded


async def inbox_rate(settings: Settings, redis_url: str, n: int) -> float:
    """Events per second the relay moves from the inbox streams to the log and the streams."""
    engine = make_engine(settings)
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE events, webhook_endpoints, webhook_deliveries"))
    client = aioredis.Redis.from_url(redis_url)
    layout = StreamLayout(f"bench-{uuid.uuid4().hex[:8]}", 64)
    script = client.register_script(INBOX_XADD_LUA + "add_events(KEYS[1], 1)\nreturn 1")
    now = datetime.now(UTC)
    kinds = ("enter", "dwell", "exit")
    for d in range(n // 3):
        device = f"d-{d}"
        events = [
            visit_event(kind, device_id=device, user_id=f"u-{d}", store_id=f"s-{d % 50}",
                        ping_key=f"p-{d}-{kind}", occurred_at=now, store_tags=["downtown"],
                        dwell_s=300.0 if kind == "dwell" else None)
            for kind in kinds
        ]  # fmt: skip
        await script([layout.inbox_key(layout.partition(device))], inbox_args(events))
    n = n // 3 * 3
    streams = EventStreams(client, layout, 100_000, "bench")
    relay = EventRelay(engine, settings, streams)
    start = time.perf_counter()
    await relay.start()
    try:
        while True:
            await asyncio.sleep(0.05)
            with engine.connect() as conn:
                done = conn.execute(
                    text("SELECT count(*) FROM events WHERE streamed AND fanned_out")
                ).scalar_one()
            if done >= n:
                break
        elapsed = time.perf_counter() - start
    finally:
        await relay.stop()  # closes the client
        engine.dispose()
        cleanup = aioredis.Redis.from_url(redis_url)
        keys = [k for i in range(64) for k in (layout.inbox_key(i), layout.events_key(i))]
        await cleanup.delete(*keys)
        await cleanup.aclose()
    return n / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pg-url", default=os.environ.get(
        "GEO_OFFERS_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres"))  # fmt: skip
    ap.add_argument("--events", type=int, default=5000)
    ap.add_argument("--concurrency", default="4,16")
    ap.add_argument("--inbox", type=int, default=0, help="time the inbox import of N events")
    ap.add_argument("--redis-url", default=os.environ.get(
        "GEO_OFFERS_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"))  # fmt: skip
    args = ap.parse_args()
    name = f"geo_offers_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(args.pg_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = args.pg_url.rpartition("/")[0] + "/" + name
    proc = None
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS postgis")
        settings = Settings(database_url=url, events_poll_s=0.05)
        engine = make_engine(settings)
        upgrade(engine)
        engine.dispose()
        if args.inbox:
            for _ in range(2):
                rate = asyncio.run(inbox_rate(settings, args.redis_url, args.inbox))
                print(f"inbox → log, fanned out, streamed: {args.inbox} events, {rate:,.0f}/s")
            return
        proc, hook = start_receiver()
        print(f"{args.events} events, one endpoint, one process, receiver answers 204")
        print(f"{'concurrency':>11} {'bare httpx/s':>13} {'relay/s':>9} {'ratio':>6}", end="")
        print(f" {'record/s':>9}")
        for c in (int(x) for x in args.concurrency.split(",")):
            bare = asyncio.run(bare_rate(hook, args.events, c))
            rate, recorded = asyncio.run(relay_rate(settings, hook, args.events, c))
            print(f"{c:>11} {bare:>13,.0f} {rate:>9,.0f} {rate / bare:>6.2f} {recorded:>9,.0f}")
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(10)
        with psycopg.connect(args.pg_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
