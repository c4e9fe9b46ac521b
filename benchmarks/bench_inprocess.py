"""CPU per ping inside the process: the app called as ASGI, no HTTP server, no client.

Where the CPU of a ping goes, for profiling (``benchmarks/README.md``, "Profiles"): the
same database, fences and Redis as ``bench_http.py`` (a private ``redis-server``, a
database of its own with ``--fences`` circle fences), the service's app built by
``create_app`` in this process, and ``--pings`` pings sent straight into it with
``--concurrency`` in flight on uvloop. Each row is ``time.process_time()`` per ping over
``--repeat`` rounds (min–max), after a warm-up round that caches every device's state:

- ``app``: the whole ASGI app (``GeoOffersAPI.__call__``: the ping lane, request id,
  metrics, Redis client);
- ``answer_ping``: the ping's work without the lane (key check, validation, matching,
  state step, the Redis script, the answer);
- ``answer_ping, script answered in-process``: the same with the Redis call replaced by
  an in-process reply (what the Python work costs without the I/O).

Usage::

    .venv/bin/python benchmarks/bench_inprocess.py [--fences 100000] [--pings 30000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_http as bh

Scope = dict[str, Any]


_ROUND = iter(range(1_000_000))


def bodies(
    points: list[tuple[str, str, int]], n: int, devices: int, fixed: bool = False
) -> list[bytes]:
    """``n`` pings of ``devices`` devices; ``devices=0``: a new device on every ping;
    ``fixed``: the devices in turn, each always at its own point."""
    ts = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    run = next(_ROUND)
    out = []
    for i in range(n):
        if fixed:
            lat, lng, acc = points[i % devices]
            dev = f"ip-{i % devices}"
        else:
            lat, lng, acc = points[random.randrange(len(points))]
            dev = f"ip-{random.randrange(devices)}" if devices else f"new-{run}-{i}"
        out.append(
            (
                f'{{"device_id":"{dev}","lat":{lat},"lng":{lng},'
                f'"accuracy_m":{acc},"timestamp":"{ts}","ping_id":"ip-{run}-{i}"}}'
            ).encode()
        )
    return out


async def measure(
    target: Callable[[Scope, Any, Any], Awaitable[None]],
    app: Any,
    key: bytes,
    batch: list[bytes],
    concurrency: int,
) -> tuple[float, dict[int, int]]:
    """CPU µs per ping for ``batch`` sent into ``target``, and the statuses answered."""
    statuses: dict[int, int] = {}

    async def one(body: bytes) -> None:
        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                statuses[message["status"]] = statuses.get(message["status"], 0) + 1

        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": "POST", "scheme": "http", "path": "/v1/locations",
            "raw_path": b"/v1/locations", "root_path": "", "query_string": b"",
            "headers": [
                (b"host", b"bench"), (b"authorization", b"Bearer " + key),
                (b"content-type", b"application/json"),
                (b"content-length", b"%d" % len(body)),
            ],
            "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80), "state": {}, "app": app,
        }  # fmt: skip
        await target(scope, receive, send)

    async def worker(part: list[bytes]) -> None:
        for body in part:
            await one(body)

    parts = [batch[i::concurrency] for i in range(concurrency)]
    cpu = time.process_time()
    await asyncio.gather(*(worker(p) for p in parts))
    return (time.process_time() - cpu) * 1e6 / len(batch), statuses


async def run(args: argparse.Namespace, db_url: str, redis_url: str, key: str, points: Any) -> None:
    from service.app import create_app
    from service.campaigns.service import import_campaigns
    from service.locations.router import answer_ping
    from service.settings import Settings

    settings = Settings(
        database_url=db_url, redis_url=redis_url, redis_prefix="inprocess",
        device_rate_per_s=0, log_level="WARNING",
    )  # fmt: skip
    app = create_app(settings)
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    await inbox.put({"type": "lifespan.startup"})
    lifespan = asyncio.create_task(
        app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, inbox.get, outbox.put)
    )
    started = await outbox.get()
    if started["type"] != "lifespan.startup.complete":
        raise RuntimeError(f"the app did not start: {started}")
    auth = f"Bearer {key}"
    if args.mix == "offer":  # a campaign that offers on every enter; a new device per ping
        doc = bh.offer_campaigns(with_caps=args.caps)
        import_campaigns(app.state.engine, doc, "c.json")
        await app.state.campaign_holder.refresh(force=True)
        args.devices = 0

    async def direct(scope: Scope, receive: Any, send: Any) -> None:
        body = (await receive())["body"]
        await answer_ping(app.state, auth, "", body)
        await send({"type": "http.response.start", "status": 200})

    store = app.state.state_store

    async def in_process_reply(keys: list[Any], argv: list[Any]) -> list[Any]:
        return [2, 0, b""]  # stored, not a new device, no fix kept by the idle path

    try:
        # Warm-up: every device's state cached, the script loaded.
        fixed = args.mix == "inside"
        warm = bodies(points, max(args.devices * 3, 2000), args.devices, fixed)
        await measure(app, app, key.encode(), warm, args.concurrency)
        rows = [("app", app, None), ("answer_ping", direct, None)]
        if args.mix != "offer":
            rows.append(("answer_ping, script answered in-process", direct, in_process_reply))
        if args.profile:
            import cProfile

            prof = cProfile.Profile()
            prof.enable()
            await measure(app, app, key.encode(), bodies(points, args.pings, args.devices),
                          args.concurrency)  # fmt: skip
            prof.disable()
            prof.dump_stats(args.profile)
            print(f"profile of the app over {args.pings:,} pings written to {args.profile}")
        print(
            f"{args.fences:,} fences, {args.pings:,} pings x {args.repeat} rounds, "
            f"{args.concurrency} in flight, {args.devices:,} devices (states cached)"
        )
        for label, target, reply in rows:
            if reply is not None:
                store._script = reply
            per = []
            for _ in range(args.repeat):
                batch = bodies(points, args.pings, args.devices, fixed)
                us, statuses = await measure(target, app, key.encode(), batch, args.concurrency)
                if set(statuses) != {200}:
                    raise RuntimeError(f"{label}: statuses {statuses}")
                per.append(us)
            if reply is not None:
                del store._script
            print(f"  {label:<42} {min(per):6.1f}–{max(per):6.1f} µs CPU per ping")
        if args.mix == "offer":
            ready = app.state.ping_context.offers.committer
            print(f"  issuance batches: {ready.batches:,}, rows {ready.issued:,}")
    finally:
        await inbox.put({"type": "lifespan.shutdown"})
        await lifespan


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fences", type=int, default=100_000)
    p.add_argument("--pings", type=int, default=30_000)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--devices", type=int, default=500)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--seed", type=int, default=5)
    p.add_argument(
        "--mix",
        choices=("ping", "offer", "outside", "inside"),
        default="ping",
        help="ping: known devices, each ping at a random point, half inside a fence; offer: "
        "every ping a coupon; the steady pings: outside (in no fence) and inside (each device "
        "stays at its own point inside a fence: no event after its enter)",
    )
    p.add_argument("--caps", action="store_true", help="offer mix: loose caps and a budget")
    p.add_argument("--profile", default=None, help="write a cProfile of one more round here")
    p.add_argument("--pg-url", default=bh.DEFAULT_PG_URL)
    args = p.parse_args(argv)
    import uvloop

    rng = np.random.default_rng(args.seed)
    random.seed(args.seed)
    with contextlib.ExitStack() as stack:
        workdir = Path(tempfile.mkdtemp(prefix="geo-inprocess-"))
        redis_server = bh.PrivateRedis(workdir)
        stack.callback(redis_server.stop)
        db = bh.BenchDatabase(args.pg_url)
        stack.callback(db.drop)
        env = bh.service_env(db.url, redis_server.url, "inprocess")
        bh.geo_offers("migrate", env=env)
        fences = bh.make_fences(args.fences, rng)
        db.load_fences(fences)
        key = bh.geo_offers("keys", "create", "--role", "sdk", "--label", "inprocess", env=env)
        share = {"offer": 1.0, "inside": 1.0, "outside": 0.0}.get(args.mix, 0.5)
        points = bh.make_points(fences, bh.N_POINTS, rng, inside_share=share)
        uvloop.run(run(args, db.url, redis_server.url, key, points))
    return 0


if __name__ == "__main__":  # the index build child re-imports this module: run only here
    sys.exit(main())
