# ruff: noqa: E501
"""The fence index at national scale: two replicas on PostGIS + Redis with 1 M fences.

    .venv/bin/python benchmarks/bench_index_scale.py                 # 1 M fences, ~15 minutes
    .venv/bin/python benchmarks/bench_index_scale.py --fences 100000  # a quicker look

What one run does (everything it creates, it removes at the end):

1. a fresh PostGIS database (``geo-offers migrate``), its own ``redis-server``, keys;
   a CSV of N circle stores on land around 300 cities (radii 45.72 m / 100 m / 1 km);
2. replicas A and B (``geo-offers serve``, one worker each, each with its own index
   directory: two hosts), started on the empty database;
3. the bulk import of the CSV through A (until A answers: A serves it by then; B is
   stopped meanwhile, as if on another host, so its own base build does not take A's CPUs),
   and until B serves it too once resumed;
4. a one-row upsert through A (a new store): until A answers, then until B matches a ping
   inside the new fence; a delete through A: until B stops matching it;
5. start-up until ready of a new replica that must build its base, and of one that finds it;
6. memory of 1, 2 and 4 workers on one host sharing one index directory, after 10 s of
   pings spread over the index: RSS, PSS and USS of each worker from
   ``/proc/<pid>/smaps_rollup``. PSS splits each shared page among the
   processes mapping it, so the PSS of the workers adds up to what they take together
   (each mapped index page counted once); USS is what a worker alone holds;
7. pings to B at 50 % of its measured maximum (open loop, latency from the scheduled send
   time) for ``--duration`` seconds, once alone and once while 1,000 single-fence imports are
   committed one after the other by a writer process (the service's import function,
   ``--change-rate`` a second, 50 by default; B follows them as deltas through its polls);
   p99 of both.
   (The writer is not a third server on this 2-vCPU machine: its HTTP work would take CPU
   from B, and the benchmark measures what following the changes costs B.)

Prints a table and writes ``benchmarks/results/index-<UTC timestamp>.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import multiprocessing
import os
import random
import signal
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.bench_http import (  # noqa: E402
    BIN,
    PrivateRedis,
    Server,
    free_port,
    geo_offers,
    loadavg,
    log,
    machine_info,
    run_open_loop,
    service_env,
)
from geofences.sphere import EARTH_RADIUS_M  # noqa: E402
from geofences.timezones import is_open_sea_or_antarctica, timezone_at  # noqa: E402

RESULTS_DIR = ROOT / "benchmarks" / "results"
DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def write_csv(path: Path, n: int, seed: int) -> np.ndarray:
    """``n`` stores on land (a point at sea would be a swapped-coordinates row error)."""
    rng = np.random.default_rng(seed)
    cities: list[tuple[float, float]] = []
    while len(cities) < 300:
        la, ln = rng.uniform(-45, 60), rng.uniform(-180, 180)
        if not is_open_sea_or_antarctica(timezone_at(la, ln), la):
            cities.append((la, ln))
    cz = np.array(cities)
    out = np.empty((n, 3))
    k = 0
    with path.open("w") as fh:
        fh.write("store_id,name,lat,lng,radius_m,tags\n")
        while k < n:
            m = n - k + 1000
            c = rng.integers(0, 300, m)
            sig = rng.uniform(2000, 15000, 300)[c]
            lat = cz[c, 0] + np.degrees(rng.normal(0, 1, m) * sig / EARTH_RADIUS_M)
            coslat = EARTH_RADIUS_M * np.cos(np.radians(cz[c, 0]))
            lng = (cz[c, 1] + np.degrees(rng.normal(0, 1, m) * sig / coslat) + 180) % 360 - 180
            rad = rng.choice([45.72, 100.0, 1000.0], m, p=[0.6, 0.3, 0.1])
            for i in range(m):
                la, ln = float(lat[i]), float(lng[i])
                if k >= n or is_open_sea_or_antarctica(timezone_at(la, ln), la):
                    continue
                tags = "downtown" if k % 5 == 0 else ""
                fh.write(f"s{k:07d},Store {k},{la!r},{ln!r},{float(rad[i])!r},{tags}\n")
                out[k] = (la, ln, rad[i])
                k += 1
    return out


def smaps(pid: int) -> dict[str, float]:
    vals: dict[str, float] = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and parts[1].isdigit():
                vals[parts[0].rstrip(":")] = int(parts[1]) / 1024
    uss = vals.get("Private_Clean", 0.0) + vals.get("Private_Dirty", 0.0)
    return {"rss": vals["Rss"], "pss": vals["Pss"], "uss": uss}


def workers_of(pid: int, n: int) -> list[int]:
    if n == 1:
        return [pid]
    kids: list[int] = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            kids += [int(c) for c in f.read().split()]
    out = []
    for k in kids:
        with open(f"/proc/{k}/cmdline", "rb") as f:
            if b"resource_tracker" not in f.read():
                out.append(k)
    return out


class Replica:
    def __init__(self, name: str, env: dict[str, str], workers: int, workdir: Path) -> None:
        self.port = free_port()
        self.workers = workers
        self.srv = Server(
            name,
            [str(BIN / "geo-offers"), "serve", "--host", "127.0.0.1", "--port", str(self.port),
             "--workers", str(workers)],
            env, self.port, workdir,
        )  # fmt: skip
        self.url = f"http://127.0.0.1:{self.port}"

    def ready(self, timeout_s: float) -> float:
        return self.srv.wait_ready("/readyz", timeout_s)

    def version(self) -> int:
        with urllib.request.urlopen(self.url + "/readyz", timeout=10) as r:
            return int(json.loads(r.read())["index"]["version"] or 0)

    def stop(self) -> None:
        self.srv.stop()


def ping_enters(client: httpx.Client, url: str, sdk: str, lat: float, lng: float) -> set[str]:
    body = {
        "device_id": f"probe-{random.getrandbits(48)}", "lat": lat, "lng": lng,
        "accuracy_m": 5, "timestamp": datetime.now(UTC).strftime("%FT%TZ"),
    }  # fmt: skip
    r = client.post(url + "/v1/locations", json=body, headers={"Authorization": f"Bearer {sdk}"})
    r.raise_for_status()
    return {e["store_id"] for e in r.json()["events"] if e["type"] == "enter"}


def import_rows(client: httpx.Client, url: str, admin: str, body: bytes) -> dict[str, Any]:
    r = client.post(
        url + "/v1/geofences/import", files={"file": ("s.csv", body)},
        headers={"Authorization": f"Bearer {admin}"}, timeout=600,
    )  # fmt: skip
    r.raise_for_status()
    return dict(r.json())


def wait(cond: Any, timeout_s: float, step: float = 0.02) -> float:
    t0 = time.perf_counter()
    while not cond():
        if time.perf_counter() - t0 > timeout_s:
            raise RuntimeError("timed out")
        time.sleep(step)
    return time.perf_counter() - t0


def _write_changes(db_url: str, stores: np.ndarray, n: int, rate: float) -> None:
    """``n`` single-fence upserts (moves of existing stores), one transaction each, at most
    ``rate`` a second (0: as fast as the database takes them)."""
    from service.db.engine import make_engine
    from service.fences.service import import_fences
    from service.settings import Settings

    engine = make_engine(Settings(database_url=db_url))
    rng = random.Random(7)
    started = time.perf_counter()
    for i in range(n):
        if rate > 0:
            time.sleep(max(0.0, started + i / rate - time.perf_counter()))
        j = rng.randrange(len(stores))
        row = (
            f"store_id,name,lat,lng,radius_m\ns{j:07d},Store {j},"
            f"{float(stores[j, 0]) + 1e-4 * (1 + i % 7)!r},{float(stores[j, 1])!r},100\n"
        )
        import_fences(engine, io.BytesIO(row.encode()), "c.csv")
    engine.dispose()


def run(args: argparse.Namespace, stack: contextlib.ExitStack, workdir: Path) -> dict[str, Any]:
    res: dict[str, Any] = {
        "fences": args.fences, "machine": machine_info(), "load": loadavg(),
        "changes": args.changes, "change_rate": args.change_rate,
    }  # fmt: skip
    name = f"geo_idx_{os.getpid()}_{random.randrange(16**6):06x}"
    with psycopg.connect(args.pg_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with psycopg.connect(args.pg_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    stack.callback(drop)
    db_url = f"{args.pg_url.rpartition('/')[0]}/{name}"
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION postgis")
    redis = PrivateRedis(workdir)
    stack.callback(redis.stop)
    env = service_env(db_url, redis.url, "idx")
    geo_offers("migrate", env=env)
    admin = geo_offers("keys", "create", "--role", "admin", env=env)
    sdk = geo_offers("keys", "create", "--role", "sdk", env=env)
    csv = workdir / "stores.csv"
    log(f"writing {args.fences:,} stores")
    stores = write_csv(csv, args.fences, args.seed)

    def replica(tag: str, workers: int = 1, index_dir: str | None = None) -> Replica:
        e = dict(env, GEO_OFFERS_INDEX_DIR=str(workdir / (index_dir or f"idx-{tag}")),
                 GEO_OFFERS_INDEX_POLL_S=str(args.poll_s))  # fmt: skip
        r = Replica(f"replica {tag}", e, workers, workdir)
        stack.callback(r.stop)
        return r

    a, b = replica("a"), replica("b")
    a.ready(120)
    b.ready(120)
    client = stack.enter_context(httpx.Client(timeout=60))
    log("bulk import through A")
    # B is stopped meanwhile: on another host its base build would not take A's CPUs, as
    # it does on one 2-vCPU machine. Resumed once A answers, B catches up by itself.
    os.killpg(b.srv.proc.pid, signal.SIGSTOP)
    try:
        t0 = time.perf_counter()
        out = import_rows(client, a.url, admin, csv.read_bytes())
        res["bulk_import_s"] = time.perf_counter() - t0
    finally:
        os.killpg(b.srv.proc.pid, signal.SIGCONT)
    version = out["version"]
    res["bulk_b_serves_after_s"] = wait(lambda: b.version() >= version, 300, 0.2)
    log(f"  {res['bulk_import_s']:.1f} s; B serves it {res['bulk_b_serves_after_s']:.1f} s later")

    # one-row upsert and a delete, seen from B
    lat, lng = float(stores[0, 0]) + 0.3, float(stores[0, 1])
    new_row = f"store_id,name,lat,lng,radius_m\nnew-1,New,{lat!r},{lng!r},100\n".encode()
    t0 = time.perf_counter()
    import_rows(client, a.url, admin, new_row)
    res["upsert_answer_s"] = time.perf_counter() - t0
    res["upsert_b_matches_after_s"] = wait(
        lambda: "new-1" in ping_enters(client, b.url, sdk, lat, lng), 60
    )
    t0 = time.perf_counter()
    r = client.delete(a.url + "/v1/geofences/new-1", headers={"Authorization": f"Bearer {admin}"})
    r.raise_for_status()
    res["delete_answer_s"] = time.perf_counter() - t0
    res["delete_b_stops_after_s"] = wait(
        lambda: "new-1" not in ping_enters(client, b.url, sdk, lat, lng), 60
    )
    log(f"  upsert {res['upsert_answer_s']:.3f} s, B +{res['upsert_b_matches_after_s']:.3f} s; "
        f"delete {res['delete_answer_s']:.3f} s, B +{res['delete_b_stops_after_s']:.3f} s")  # fmt: skip

    # start-up of a replica that builds its base, and of one that finds it on disk
    c = replica("c")
    res["startup_build_s"] = c.ready(300)
    c.stop()
    c2 = replica("c2", index_dir="idx-c")
    res["startup_mapped_s"] = c2.ready(300)
    c2.stop()
    log(
        f"  start-up: building {res['startup_build_s']:.1f} s, mapping {res['startup_mapped_s']:.1f} s"
    )

    # memory with 1, 2, 4 workers on one host, after pings spread over the whole index
    # (a mapped page counts once it has been read)
    pts = [(float(stores[i, 0]), float(stores[i, 1])) for i in range(0, len(stores), 97)]
    run_id = random.getrandbits(32)
    counter = [0]

    def body() -> bytes:
        counter[0] += 1
        la, ln = pts[random.randrange(len(pts))]
        return (
            f'{{"device_id":"d-{random.randrange(20000)}","lat":{la},"lng":{ln},'
            f'"accuracy_m":5,"timestamp":"{datetime.now(UTC).strftime("%FT%TZ")}",'
            f'"ping_id":"{run_id}-{counter[0]}"}}'
        ).encode()

    res["memory"] = {}
    for n in (1, 2, 4):
        r = replica(f"mem{n}", workers=n, index_dir="idx-mem")
        r.ready(300)
        run_open_loop(r.port, sdk, body, 500.0, 10.0, 32)
        time.sleep(1.0)
        rows = [smaps(p) for p in workers_of(r.srv.proc.pid, n)]
        res["memory"][n] = {
            "workers": rows,
            "pss_total": sum(x["pss"] for x in rows),
            "rss_total": sum(x["rss"] for x in rows),
        }
        log(f"  {n} worker(s): PSS total {res['memory'][n]['pss_total']:.0f} MB, per worker "
            + ", ".join(f"RSS {x['rss']:.0f}/PSS {x['pss']:.0f}/USS {x['uss']:.0f}" for x in rows))  # fmt: skip
        r.stop()

    # p99 of pings to B at 50 % of its maximum, without and with 1,000 single-fence changes
    peak = run_open_loop(b.port, sdk, body, args.max_rate, 6.0, 64)
    rate = 0.5 * peak["achieved_rps"]
    res["max_rps"] = peak["achieved_rps"]
    log(f"  B's maximum ~{res['max_rps']:,.0f} pings/s; load at {rate:,.0f}/s")
    quiet = run_open_loop(b.port, sdk, body, rate, args.duration, 64)

    def changes() -> tuple[float, float]:
        # A process of its own (the load client's event loop keeps this process's GIL),
        # importing one row at a time through the service's import function, as fast as the
        # database takes them; B follows them as deltas.
        t_start = time.perf_counter()
        ctx = multiprocessing.get_context("spawn")
        proc = ctx.Process(
            target=_write_changes, args=(db_url, stores, args.changes, args.change_rate)
        )
        proc.start()
        proc.join()
        if proc.exitcode != 0:
            raise RuntimeError("the change writer failed")
        return t_start, time.perf_counter()

    busy = run_open_loop(b.port, sdk, body, rate, args.duration, 64, (1.0, changes))
    res["p99_quiet_ms"] = quiet["p99_ms"]
    ev = busy.get("event") or {}
    res["p99_changes_ms"] = ev.get("during_p99_ms") or busy["p99_ms"]
    res["changes_s"] = ev.get("seconds", ev.get("duration_s"))
    res["load_runs"] = {"quiet": quiet, "changes": busy}
    log(f"  p99 quiet {quiet['p99_ms']:.2f} ms; during {args.changes} changes "
        f"{res['p99_changes_ms']:.2f} ms ({ev})")  # fmt: skip
    return res


def render(r: dict[str, Any]) -> str:
    m = r["memory"]
    lines = [
        f"fences: {r['fences']:,}   machine: {r['machine'].get('cpu', '?')}, "
        f"{r['machine'].get('nproc')} vCPU, load {r['load']}",
        "| measure | value | target |",
        "|---|---|---|",
        f"| bulk import of {r['fences']:,} rows, until A answers | {r['bulk_import_s']:.1f} s | ≤ 60 s |",
        f"| … until replica B (resumed then) serves them | +{r['bulk_b_serves_after_s']:.1f} s | |",
        f"| one-row upsert, until A answers | {r['upsert_answer_s'] * 1000:.0f} ms | ≤ 1 s |",
        f"| … until B matches a ping inside it | +{r['upsert_b_matches_after_s']:.2f} s | ≤ 5 s |",
        f"| a delete, until A answers | {r['delete_answer_s'] * 1000:.0f} ms | |",
        f"| … until B stops matching | +{r['delete_b_stops_after_s']:.2f} s | ≤ 5 s |",
        f"| start-up until ready, building the base | {r['startup_build_s']:.1f} s | ≤ 30 s |",
        f"| start-up until ready, base on disk | {r['startup_mapped_s']:.1f} s | |",
    ]
    for n in (1, 2, 4):
        row = m[n]
        per = " / ".join(f"{w['rss']:.0f}, {w['pss']:.0f}, {w['uss']:.0f}" for w in row["workers"])
        lines.append(f"| {n} worker(s): PSS total; per worker RSS, PSS, USS (MB) | "
                     f"{row['pss_total']:.0f} MB; {per} | 1st ≤ 350, +≤ 120 each |")  # fmt: skip
    lines += [
        f"| B's maximum (open loop) | {r['max_rps']:,.0f} pings/s | |",
        f"| p99 at 50 %, no changes | {r['p99_quiet_ms']:.2f} ms | |",
        f"| p99 at 50 %, during {r['changes']:,} single-fence changes ({r['change_rate']:g}/s; 0 = unpaced) | {r['p99_changes_ms']:.2f} ms | ≤ +10 ms |",
    ]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fences", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--pg-url", default=os.environ.get("GEO_OFFERS_BENCH_PG_URL", DEFAULT_PG_URL))
    ap.add_argument("--poll-s", type=float, default=1.0, help="GEO_OFFERS_INDEX_POLL_S")
    ap.add_argument("--duration", type=float, default=40.0, help="seconds per load run")
    ap.add_argument("--changes", type=int, default=1000)
    ap.add_argument(
        "--change-rate", type=float, default=50.0, help="changes per second (0: unpaced)"
    )
    ap.add_argument("--max-rate", type=float, default=15000.0, help="offered rate to find the max")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-index-") as tmp, contextlib.ExitStack() as st:
        res = run(args, st, Path(tmp))
    print(render(res))
    RESULTS_DIR.mkdir(exist_ok=True)
    out = RESULTS_DIR / f"index-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    out.write_text(json.dumps(res, indent=1, default=str))
    log(f"wrote {out}")
    return 0 if all(math.isfinite(v) for v in (res["bulk_import_s"],)) else 1


if __name__ == "__main__":
    sys.exit(main())
