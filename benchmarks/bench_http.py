"""HTTP benchmark of the ping endpoint beside its references, in one run, on one machine.

    .venv/bin/python benchmarks/bench_http.py                  # 1 worker, ~4 minutes
    .venv/bin/python benchmarks/bench_http.py --workers 1,2    # also 2 workers, ~7 minutes
    .venv/bin/python benchmarks/bench_http.py --only ping      # just the service's ping row

What one run does (everything it creates, it removes at the end):

1. a fresh PostGIS database: ``geo-offers migrate``, then N circle fences (default 100 k,
   clustered around 300 cities, radii 45.72 m / 100 m / 1 km) written with ``COPY`` into the
   service's own table (rows built by the service's own ``record_to_row``), an sdk and an
   admin key from ``geo-offers keys create``;
2. its own ``redis-server`` on a free loopback port (``--redis-url`` uses an existing one
   under a unique key prefix instead, and skips the Redis counts);
3. for each worker count, in turn, on the same uvicorn settings (uvloop, httptools, no
   access log): the service (``geo-offers serve``, no campaign, so no offer), the raw ASGI
   echo and the naive FastAPI + PostGIS app of ``benchmarks/apps.py``. Each gets a warm-up
   and a timed wrk run with the same request mix: a random device of 20 k per wrk thread at
   a random point of a pre-generated table (half inside a fence, half 200 m - 3 km from
   one), a unique ``ping_id`` and a timestamp of "now" (RFC 3339, made in Lua);
4. latency at 70 % of the service's measured maximum: wrk has no constant-rate mode (wrk2
   has), so an open-loop client written here (uvloop, ``asyncio.Protocol`` on raw
   keep-alive sockets) sends at a fixed rate and measures each request from its
   *scheduled* send time, as wrk2 does, so a stall is not hidden by the client waiting
   (coordinated omission). The echo app at the same rate shows the floor of this client;
5. the offer path: a campaign that fires on every enter, no caps, and every request a new
   device entering a store, so each ping reads the user's facts and writes an issuance to
   PostGIS; then the same with a loose (never-binding) per-user cap and a budget, which
   adds the atomic Redis cap and budget scripts every real campaign runs;
6. counts for ``capacity.py``: Redis commands per ping and per offer (``MONITOR`` on the
   private Redis: client round trips and commands run inside Lua scripts), Redis CPU per
   ping, PostgreSQL transactions and rows written per ping and per offer
   (``pg_stat_database`` of the bench database).

It prints a table and writes ``benchmarks/results/http-<timestamp>.json``. The machine is
noisy and shared: compare the ratios measured in one run, not figures across runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import math
import os
import platform
import random
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import psycopg
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the service's own row builder, whatever the cwd

from geofences.model import DEFAULT_RADIUS_M, FenceRecord  # noqa: E402
from geofences.sphere import EARTH_RADIUS_M  # noqa: E402
from service.events.streams import CLIENT_NAME as RELAY_CLIENT  # noqa: E402
from service.fences.repository import record_to_row  # noqa: E402
from service.settings import Settings  # noqa: E402

RESULTS_DIR = ROOT / "benchmarks" / "results"
BIN = Path(sys.executable).parent
N_CITIES = 300
N_POINTS = 20_000
DEVICES_PER_THREAD = 20_000
PING_PATH = "/v1/locations"
DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/postgres"

# Targets of issue 11, reported as measured (never tuned to pass).
TARGET_VS_FLOOR = 0.5  # steady pings, 1 worker
TARGET_VS_NAIVE = 3.0  # steady pings, 1 worker; and new devices near stores
TARGET_OFFER_VS_NAIVE = 1.0  # the offer moment, throughput
TARGET_OFFER_P99_MS = 50.0  # the offer moment, open loop at 70 % of its own maximum
#: Warm-up of the staying-put mix: every device of wrk's threads pings at its point first.
STAY_WARMUP_S = 12.0
#: Seconds the open-loop client runs flat out before each paced row, to show its own maximum.
CLIENT_MAX_S = 4.0
TARGET_P99_MS_AT_70 = 10.0  # steady pings, 2 workers, open loop at 70 % of the maximum
#: Fences of the new-device mix (the issue's reference: 41 k stores) and how far from a
#: store's edge its pings are.
NEW_FENCES = 41_000
NEAR_M = 100.0
LOAD_FRACTION = 0.70
#: Rates of the index-swap runs: the target's 70 %, and a rate the open-loop client's
#: requests do not saturate (at low concurrency a request costs the server more CPU than
#: under wrk's 64 busy connections, so 70 % of wrk's maximum is near the open-loop limit).
SWAP_FRACTIONS = (0.70, 0.30)

WRK_INSTALL = (
    "wrk is not installed. On Debian/Ubuntu: sudo apt-get update && sudo apt-get install -y wrk "
    "(macOS: brew install wrk)."
)


# --- small helpers ----------------------------------------------------------------------------


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _children(pid: int) -> list[int]:
    out = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out += [int(c) for c in f.read().split()]
    return out


def _tree(pid: int, workers: int) -> Iterator[tuple[int, str]]:
    """A server process and its descendants with their kind: the server's own processes
    (uvicorn's supervisor and its workers; with one worker the server is the worker), the
    event relay process (started by ``serve``), index build children (started by a
    worker), and multiprocessing's resource trackers."""
    todo = [(pid, 0)]
    while todo:
        p, depth = todo.pop()
        todo += [(c, depth + 1) for c in _children(p)]
        try:
            with open(f"/proc/{p}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        if b"resource_tracker" in cmd:
            kind = "resource trackers"
        elif b"service.cli\0relay" in cmd:
            kind = "relay"
        elif depth == 0 or (depth == 1 and workers > 1):
            kind = "service"
        else:
            kind = "build children"
        yield p, kind


def tree_rss_mb(pid: int, workers: int) -> dict[str, float]:
    """Resident memory of a server process and its descendants (Linux ``/proc``), in MB by
    kind (:func:`_tree`)."""
    out = {"service": 0.0, "relay": 0.0, "build children": 0.0, "resource trackers": 0.0}
    for p, kind in _tree(pid, workers):
        try:
            with open(f"/proc/{p}/status") as f:
                rss_kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        except (OSError, StopIteration):
            continue
        out[kind] += rss_kb / 1024
    return {k: round(v, 1) for k, v in out.items()}


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a live process (``/proc/<pid>/stat``); 0 if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS  # utime, stime


def cpu_snapshot(server_pid: int, workers: int) -> dict[str, float]:
    """CPU seconds so far of the server's processes by kind and of every PostgreSQL
    process (the bench's Redis says its own: :meth:`PrivateRedis.cpu_s`; the client's is
    ``getrusage(RUSAGE_CHILDREN)`` around its run)."""
    out = {"server": 0.0, "relay": 0.0, "postgres": 0.0}
    for p, kind in _tree(server_pid, workers):
        if kind in ("service", "build children"):
            out["server"] += proc_cpu_s(p)
        elif kind == "relay":
            out["relay"] += proc_cpu_s(p)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError), open(f"/proc/{entry}/comm", "rb") as f:
                if f.read().strip() == b"postgres":
                    out["postgres"] += proc_cpu_s(int(entry))
    return out


def loadavg() -> str:
    """The 1, 5 and 15 minute load averages: how busy the shared machine was."""
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "?"


def machine_info() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions: dict[str, str] = {}
    for mod in ("uvicorn", "fastapi", "starlette", "pydantic", "psycopg", "orjson", "uvloop"):
        with contextlib.suppress(Exception):
            versions[mod] = __import__(mod).__version__
    wrk = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
    versions["wrk"] = (wrk.stdout or wrk.stderr).split("[")[0].strip().removeprefix("wrk ")
    with contextlib.suppress(Exception):
        rv = subprocess.run(["redis-server", "--version"], capture_output=True, text=True)
        m = re.search(r"v=(\S+)", rv.stdout)
        versions["redis"] = m.group(1) if m else "?"
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
    }


# --- synthetic stores and pings ----------------------------------------------------------------


def _offset(
    lat: np.ndarray, lng: np.ndarray, east_m: np.ndarray, north_m: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Small local offsets in metres (equirectangular is plenty for synthetic data)."""
    lat2 = lat + np.degrees(north_m / EARTH_RADIUS_M)
    lng2 = lng + np.degrees(east_m / (EARTH_RADIUS_M * np.cos(np.radians(lat))))
    return np.clip(lat2, -89.9, 89.9), (lng2 + 180.0) % 360.0 - 180.0


@dataclass
class Fences:
    lat: np.ndarray
    lng: np.ndarray
    radius_m: np.ndarray

    def records(self) -> Iterator[FenceRecord]:
        for i in range(len(self.lat)):
            yield FenceRecord(
                store_id=f"s{i:07d}",
                name=f"Bench store {i}",
                lat=float(self.lat[i]),
                lng=float(self.lng[i]),
                radius_m=float(self.radius_m[i]),
                tags=("downtown",) if i % 5 == 0 else (),
                timezone="UTC",
            )


def make_fences(n: int, rng: np.random.Generator) -> Fences:
    """``n`` circle stores clustered around ``N_CITIES`` cities, as in bench_geofences.py.

    Circles only: the naive reference answers circles with ``ST_DWithin``, and both must
    answer the same question.
    """
    cities = np.column_stack((rng.uniform(-45, 60, N_CITIES), rng.uniform(-180, 180, N_CITIES)))
    city = rng.integers(0, N_CITIES, n)
    sigma = rng.uniform(2_000, 15_000, N_CITIES)[city]  # dense downtowns, sprawling suburbs
    lat, lng = _offset(
        cities[city, 0], cities[city, 1], rng.normal(0, 1, n) * sigma, rng.normal(0, 1, n) * sigma
    )
    radii = rng.choice([DEFAULT_RADIUS_M, 100.0, 1000.0], n, p=[0.6, 0.3, 0.1])
    return Fences(lat, lng, radii)


def make_points(
    f: Fences, n: int, rng: np.random.Generator, inside_share: float, near_m: float | None = None
) -> list[tuple[str, str, int]]:
    """Ping positions: ``inside_share`` within 0.8 r of a store, the rest 200 m - 3 km away;
    with ``near_m``, every point within ``near_m`` of a store's edge (inside or out)."""
    j = rng.integers(0, len(f.lat), n)
    inside = rng.random(n) < inside_share
    dist = np.where(
        inside, f.radius_m[j] * 0.8 * np.sqrt(rng.random(n)), rng.uniform(200, 3_000, n)
    )
    if near_m is not None:
        dist = (f.radius_m[j] + near_m) * np.sqrt(rng.random(n))
    ang = rng.uniform(0, 2 * math.pi, n)
    lat, lng = _offset(f.lat[j], f.lng[j], dist * np.cos(ang), dist * np.sin(ang))
    acc = rng.integers(5, 50, n)
    return [(f"{a:.7f}", f"{b:.7f}", int(c)) for a, b, c in zip(lat, lng, acc, strict=True)]


# --- the request mix, in wrk's Lua ------------------------------------------------------------

LUA = r"""
-- Generated by benchmarks/bench_http.py. Args: mode ("ping" | "offer"), run id.
-- ping: a random device (of __NDEV__ per thread) at a random point of points.txt.
-- stay: a random device (of __NDEV__ per thread) at its own point of points.txt, every time.
-- offer: a new device on every request, at a point inside a store (inside.txt).
-- new: a new device on every request, within 100 m of a store's edge (near.txt).
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer __KEY__"

local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end

local function load(path)
  local t = {}
  for line in io.lines(path) do
    local lat, lng, acc = line:match("([^,]+),([^,]+),([^,]+)")
    t[#t + 1] = '"lat":' .. lat .. ',"lng":' .. lng .. ',"accuracy_m":' .. acc
  end
  return t
end

local pts, n, mode, run
local counter, last_sec, ts = 0, -1, ""

function init(args)
  mode = args[1] or "ping"
  run = args[2] or "r"
  local files = {offer = "inside.txt", new = "near.txt"}
  pts = load("__DIR__/" .. (files[mode] or "points.txt"))
  n = #pts
  math.randomseed(os.time() * 1000 + (tid or 0) * 7919)
end

function request()
  counter = counter + 1
  local now = os.time()
  if now ~= last_sec then  -- RFC 3339 "now", recomputed once a second
    last_sec = now
    ts = os.date("!%Y-%m-%dT%H:%M:%SZ", now)
  end
  local dev
  local pt = math.random(n)
  if mode == "offer" or mode == "new" then
    dev = "o" .. run .. "-" .. tid .. "-" .. counter
  elseif mode == "stay" then
    local k = math.random(__NDEV__)
    dev = "s" .. tid .. "-" .. k
    pt = (k * 7919 + tid) % n + 1
  else
    dev = "d" .. tid .. "-" .. math.random(__NDEV__)
  end
  local body = '{"device_id":"' .. dev .. '",' .. pts[pt] .. ',"timestamp":"' ..
    ts .. '","ping_id":"' .. run .. "-" .. tid .. "-" .. counter .. '"}'
  return wrk.format(nil, nil, nil, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"connect_errors":%d,"read_errors":%d,' ..
    '"write_errors":%d,"status_errors":%d,"timeouts":%d,"p50_us":%d,"p90_us":%d,' ..
    '"p99_us":%d,"p999_us":%d,"max_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, latency.mean))
end
"""


def write_workload(
    workdir: Path,
    key: str,
    points: list[tuple[str, str, int]],
    inside: list[tuple[str, str, int]],
    near: list[tuple[str, str, int]],
) -> Path:
    for name, rows in (("points.txt", points), ("inside.txt", inside), ("near.txt", near)):
        (workdir / name).write_text("".join(f"{a},{b},{c}\n" for a, b, c in rows))
    lua = (
        LUA.replace("__KEY__", key)
        .replace("__DIR__", str(workdir))
        .replace("__NDEV__", str(DEVICES_PER_THREAD))
    )
    script = workdir / "ping.lua"
    script.write_text(lua)
    return script


# --- processes ---------------------------------------------------------------------------------


class Server:
    """One HTTP server process (its own session, so its workers stop with it)."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], port: int, logdir: Path):
        self.name, self.port = name, port
        self.log_path = logdir / f"{re.sub(r'[^a-z0-9]+', '-', name.lower())}-{port}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            cmd, env=env, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        self.started = time.monotonic()

    def wait_ready(self, path: str, timeout_s: float) -> float:
        """Poll ``path`` until it answers 200; returns the seconds it took."""
        url = f"http://127.0.0.1:{self.port}{path}"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited early:\n{self.tail()}")
            with (
                contextlib.suppress(OSError, urllib.error.URLError),
                urllib.request.urlopen(url, timeout=2) as resp,
            ):
                if resp.status == 200:
                    return time.monotonic() - self.started
            time.sleep(0.25)
        raise RuntimeError(f"{self.name} not ready after {timeout_s:.0f} s:\n{self.tail()}")

    def tail(self, n: int = 30) -> str:
        self._log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # uvicorn's supervisor stops its workers
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)  # our own session only
                self.proc.wait(timeout=5)
        self._log.close()


class PrivateRedis:
    """A throw-away redis-server on a free loopback port: no persistence, nothing shared."""

    def __init__(self, workdir: Path) -> None:
        if shutil.which("redis-server") is None:
            raise SystemExit("redis-server not found: install it, or pass --redis-url")
        self.port = free_port()
        self.dir = workdir / "redis"
        self.dir.mkdir()
        self.proc = subprocess.Popen(
            [
                "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--dir", str(self.dir),
            ],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.client = redis.Redis.from_url(self.url)
        for _ in range(100):
            with contextlib.suppress(redis.RedisError):
                if self.client.ping():
                    return
            time.sleep(0.05)
        raise RuntimeError("private redis-server did not start")

    def script_calls(self) -> int:
        """Scripts run so far (``EVALSHA`` and ``EVAL``): one per state round trip of a ping."""
        stats = self.client.info("commandstats")
        return sum(int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in ("evalsha", "eval"))

    def cpu_s(self) -> float:
        info = self.client.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    def key_counts(self, prefix: str) -> dict[str, int]:
        """Our keys by kind: device states, remembered ping answers, the rest."""
        out = {"state": 0, "answer": 0, "other": 0}
        for key in self.client.scan_iter(match=f"{prefix}:*", count=5000):
            if key.endswith(b":state"):
                out["state"] += 1
            elif b":ping:" in key:
                out["answer"] += 1
            else:
                out["other"] += 1
        return out

    def key_sizes(self, prefix: str, sample: int = 200) -> dict[str, float]:
        """Average ``MEMORY USAGE`` of device-state keys and of remembered ping answers."""
        out: dict[str, float] = {}
        for kind, pattern in (("state", f"{prefix}:*:state"), ("answer", f"{prefix}:*:ping:*")):
            sizes = []
            for key in self.client.scan_iter(match=pattern, count=1000):
                sizes.append(int(self.client.memory_usage(key) or 0))
                if len(sizes) >= sample:
                    break
            out[kind] = round(sum(sizes) / len(sizes), 1) if sizes else 0.0
        return out

    @contextlib.contextmanager
    def monitor(self) -> Iterator[dict[str, Any]]:
        """Count commands while the block runs: client round trips and commands run by Lua,
        the event relay's apart (its connections are named, ``CLIENT LIST``; a command run by
        Lua belongs to the script call before it: Redis runs one command at a time)."""
        out = self.dir / "monitor.txt"
        counts: dict[str, Any] = {}
        with out.open("wb") as fh:
            mon = subprocess.Popen(
                ["redis-cli", "-p", str(self.port), "monitor"], stdout=fh, start_new_session=True
            )
            time.sleep(0.3)
            try:
                yield counts
            finally:
                time.sleep(0.3)
                relay_addrs = {
                    c["addr"] for c in self.client.client_list() if c.get("name") == RELAY_CLIENT
                }
                mon.terminate()
                mon.wait(timeout=5)
        tally: dict[str, dict[str, int]] = {k: {} for k in ("client", "lua", "relay", "relay_lua")}
        script_of_relay = False  # whose script the commands run by Lua belong to
        for line in out.read_text(errors="replace").splitlines():
            m = re.match(r'^[\d.]+ \[\d+ ([^\]]+)\] "([^"]+)"', line)
            if not m:
                continue
            cmd = m.group(2).upper()
            if cmd in ("PING", "INFO", "MONITOR", "CLIENT"):  # health checks, not the workload
                continue
            if m.group(1) == "lua":
                kind = "relay_lua" if script_of_relay else "lua"
            else:
                kind = "relay" if m.group(1) in relay_addrs else "client"
                if cmd in ("EVAL", "EVALSHA", "FCALL"):
                    script_of_relay = kind == "relay"
            tally[kind][cmd] = tally[kind].get(cmd, 0) + 1
        counts.update(tally)

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


class BenchDatabase:
    """A database of our own on the PostgreSQL server, dropped at the end."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self.name = f"geo_bench_{os.getpid()}_{random.randrange(16**6):06x}"
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.name}"')
        base, _, _ = admin_url.rpartition("/")
        self.url = f"{base}/{self.name}"

    def load_fences(self, fences: Fences) -> None:
        cols = (
            "store_id", "name", "kind", "lat", "lng", "radius_m", "geometry_json", "location",
            "shape", "tags", "timezone", "address", "extra", "content_hash",
        )  # fmt: skip
        with psycopg.connect(self.url) as conn:
            with (
                conn.cursor() as cur,
                cur.copy(f"COPY geofences ({', '.join(cols)}) FROM STDIN") as cp,
            ):
                for rec in fences.records():
                    row = record_to_row(rec)
                    row["tags"] = orjson.dumps(row["tags"]).decode()
                    row["extra"] = orjson.dumps(row["extra"]).decode()
                    cp.write_row([row[c] for c in cols])
            conn.execute("UPDATE data_versions SET version = version + 1 WHERE name = 'geofences'")
            conn.commit()
            conn.autocommit = True
            conn.execute("ANALYZE geofences")

    def copy_keys(self, other_url: str) -> None:
        """The API keys of another bench database, so one workload script serves both."""
        with psycopg.connect(other_url) as src, psycopg.connect(self.url) as dst:
            rows = src.execute("SELECT id, key_hash, role, label FROM api_keys").fetchall()
            with dst.cursor() as cur:
                cur.executemany(
                    "INSERT INTO api_keys (id, key_hash, role, label) VALUES (%s, %s, %s, %s)",
                    rows,
                )
            dst.commit()

    def stats(self) -> dict[str, int]:
        """This database's transaction and row counters (flushed when backends exit)."""
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute("SELECT pg_stat_clear_snapshot()")
            row = conn.execute(
                "SELECT xact_commit, xact_rollback, tup_inserted, tup_updated, tup_deleted,"
                " tup_fetched FROM pg_stat_database WHERE datname = %s",
                (self.name,),
            ).fetchone()
        assert row is not None
        keys = ("commits", "rollbacks", "inserted", "updated", "deleted", "fetched")
        return dict(zip(keys, (int(v) for v in row), strict=True))

    def drop(self) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


# --- wrk and the open-loop client ------------------------------------------------------------


@dataclass
class WrkResult:
    requests: int
    duration_s: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    non2xx: int
    socket_errors: int

    @classmethod
    def parse(cls, out: str) -> WrkResult:
        m = re.search(r"^BENCH_JSON (.*)$", out, re.M)
        if m is None:
            raise RuntimeError(f"no result line in wrk's output:\n{out}")
        d = json.loads(m.group(1))
        dur = d["duration_us"] / 1e6
        non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        return cls(
            requests=d["requests"],
            duration_s=round(dur, 2),
            rps=round(d["requests"] / dur, 1),
            p50_ms=d["p50_us"] / 1000,
            p90_ms=d["p90_us"] / 1000,
            p99_ms=d["p99_us"] / 1000,
            p999_ms=d["p999_us"] / 1000,
            max_ms=d["max_us"] / 1000,
            non2xx=int(non2xx.group(1)) if non2xx else 0,
            socket_errors=d["connect_errors"] + d["read_errors"] + d["write_errors"]
            + d["timeouts"],
        )  # fmt: skip


@dataclass
class Bench:
    args: argparse.Namespace
    workdir: Path
    lua: Path
    sdk_key: str
    admin_key: str
    points: list[tuple[str, str, int]]
    inside: list[tuple[str, str, int]]
    near: list[tuple[str, str, int]]
    runs: list[dict[str, Any]] = field(default_factory=list)
    open_loop: list[dict[str, Any]] = field(default_factory=list)
    counts: dict[str, Any] = field(default_factory=dict)
    startup_s: dict[str, float] = field(default_factory=dict)
    #: The bench's own redis-server, whose CPU the timed runs count (None with --redis-url).
    redis: PrivateRedis | None = None
    _run_no: int = 0

    def run_id(self) -> str:
        self._run_no += 1
        return f"{os.getpid()}r{self._run_no}"

    def wrk(self, port: int, mode: str, duration_s: float) -> WrkResult:
        cmd = [
            "wrk", f"-t{self.args.threads}", f"-c{self.args.connections}",
            f"-d{max(1, round(duration_s))}s", "--timeout", "5s", "-s", str(self.lua),
            f"http://127.0.0.1:{port}{PING_PATH}", "--", mode, self.run_id(),
        ]  # fmt: skip
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration_s + 60)
        if out.returncode != 0:
            raise RuntimeError(f"wrk failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
        return WrkResult.parse(out.stdout)

    def cpu_snapshot(self, srv: Server, workers: int) -> dict[str, float]:
        """CPU seconds so far by process kind (:func:`cpu_snapshot`), the bench's own Redis
        (0 with ``--redis-url``) and the client (this process's waited-for children: wrk)."""
        out = cpu_snapshot(srv.proc.pid, workers)
        out["redis"] = self.redis.cpu_s() if self.redis is not None else 0.0
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        out["client"] = children.ru_utime + children.ru_stime
        return out

    def warm(self, srv: Server, mode: str = "ping") -> None:
        self.wrk(srv.port, mode, self.args.warmup)

    def measure(self, target: str, workers: int, srv: Server, mode: str = "ping") -> WrkResult:
        """The timed run (after a warm-up the caller did); recorded and returned. With
        ``--py-spy DIR`` a one-worker server is sampled meanwhile (py-spy's raw format)."""
        spy = None
        if self.args.py_spy and workers == 1:
            out = Path(self.args.py_spy) / f"{re.sub(r'[^a-z0-9]+', '-', target.lower())}.txt"
            out.parent.mkdir(parents=True, exist_ok=True)
            spy = subprocess.Popen(
                [str(BIN / "py-spy"), "record", "-p", str(srv.proc.pid), "-r", "200",
                 "-d", str(max(1, round(self.args.duration) - 1)), "-f", "raw", "-o", str(out),
                 "--nonblocking"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
        before = self.cpu_snapshot(srv, workers)
        res = self.wrk(srv.port, mode, self.args.duration)
        after = self.cpu_snapshot(srv, workers)
        if spy is not None:
            spy.wait(60)
        cpu_us = {k: round((after[k] - before[k]) * 1e6 / max(res.requests, 1), 1) for k in after}
        row = {"target": target, "workers": workers, **res.__dict__, "cpu_us_per_request": cpu_us}
        self.runs.append(row)
        log(
            f"  {target} ({workers}w): {res.rps:,.0f} req/s, p50 {res.p50_ms:.2f} ms, "
            f"p99 {res.p99_ms:.2f} ms, non-2xx {res.non2xx}, socket errors {res.socket_errors}"
        )
        if res.non2xx or res.socket_errors:
            log(f"  errors: the end of {srv.name}'s log:\n{srv.tail(15)}")
        return res

    def reference(
        self, w: int, target: str, app: str, latency_label: str, env: dict[str, str], latency: bool
    ) -> None:
        """A raw ASGI reference app: its timed run, then (``latency``) the open loop at the
        rate of the service's 70 % row with as many workers."""
        port = free_port()
        srv = Server(f"{target} {w}w", uvicorn_cmd(app, port, w), env, port, self.workdir)
        try:
            srv.wait_ready("/", 30)
            self.warm(srv)
            self.measure(target, w, srv)
            ping_row = next(
                (r for r in self.runs if r["target"] == "service ping" and r["workers"] == w),
                None,
            )
            if ping_row and latency:
                self.constant_rate(latency_label, w, port, ping_row["rps"] * LOAD_FRACTION)
        finally:
            srv.stop()

    def body_maker(self, mode: str) -> Callable[[], bytes]:
        """The same request mix as the Lua script, for the Python clients."""
        pts = {"offer": self.inside, "new": self.near}.get(mode, self.points)
        run = self.run_id()
        counter = 0
        cache: list[Any] = [-1, ""]

        def make() -> bytes:
            nonlocal counter
            counter += 1
            now = int(time.time())
            if now != cache[0]:
                cache[0], cache[1] = now, datetime.fromtimestamp(now, UTC).strftime("%FT%TZ")
            lat, lng, acc = pts[random.randrange(len(pts))]
            if mode in ("offer", "new"):
                dev = f"o{run}-p-{counter}"
            elif mode == "stay":  # wrk thread 1's devices, each at its own point
                k = random.randrange(1, DEVICES_PER_THREAD + 1)
                dev = f"s1-{k}"
                lat, lng, acc = pts[(k * 7919 + 1) % len(pts)]
            else:
                dev = f"d1-{random.randrange(DEVICES_PER_THREAD)}"  # wrk thread 1's devices
            return (
                f'{{"device_id":"{dev}","lat":{lat},"lng":{lng},"accuracy_m":{acc},'
                f'"timestamp":"{cache[1]}","ping_id":"{run}-{counter}"}}'
            ).encode()

        return make

    def constant_rate(
        self,
        target: str,
        workers: int,
        port: int,
        rate: float,
        mode: str = "ping",
        event: tuple[float, Callable[[], tuple[float, float]]] | None = None,
    ) -> dict[str, Any]:
        # What the server reaches with this client at full tilt: wrk spends far less CPU
        # per request than a Python client, and both share the machine with the server, so
        # "70 % of wrk's maximum" can be most of the maximum this client leaves room for.
        full = run_open_loop(
            port, self.sdk_key, self.body_maker(mode), 3 * rate, CLIENT_MAX_S,
            self.args.open_loop_connections,
        )  # fmt: skip
        res = run_open_loop(
            port, self.sdk_key, self.body_maker(mode), rate, self.args.duration,
            self.args.open_loop_connections, event,
        )  # fmt: skip
        row = {"target": target, "workers": workers, "client_max_rps": full["achieved_rps"], **res}
        self.open_loop.append(row)
        log(
            f"  {target} ({workers}w) at {rate:,.0f} req/s (this client's max "
            f"{full['achieved_rps']:,.0f}): achieved {res['achieved_rps']:,.0f}, "
            f"p50 {res['p50_ms']:.2f} ms, p99 {res['p99_ms']:.2f} ms, errors {res['errors']}"
        )
        if "event" in res:
            log(f"  {res['event']}")
        return row

    def send(self, port: int, mode: str, n: int, rate: float) -> dict[str, Any]:
        """``n`` requests at a modest constant rate (for counting, not timing)."""
        return run_open_loop(port, self.sdk_key, self.body_maker(mode), rate, n / rate, 16)


class _Conn(asyncio.Protocol):
    """One keep-alive connection of the open-loop client: one request in flight at a time."""

    def __init__(self, client: _OpenLoop) -> None:
        self.client = client
        self.transport: Any = None  # uvloop's transports are not asyncio.Transport subclasses
        self.buf = b""
        self.need = -1  # bytes of the current response still expected (-1: headers pending)
        self.status = 0
        self.intended = 0.0
        self.busy = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def send(self, intended: float, request: bytes) -> None:
        self.intended = intended
        self.busy = True
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.need < 0:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            header = self.buf[:end]
            self.status = int(header[9:12])
            m = _CONTENT_LENGTH.search(header)
            if m is None:  # every server here sends Content-Length
                self.client.errors += 1
                self.need = 0
            else:
                self.need = int(m.group(1))
            self.buf = self.buf[end + 4 :]
        if len(self.buf) < self.need:
            return
        self.buf = self.buf[self.need :]
        self.need = -1
        self.busy = False
        self.client.done(self, self.intended, self.status)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.lost(self)


_CONTENT_LENGTH = re.compile(rb"(?i)\r\ncontent-length: *(\d+)")


class _OpenLoop:
    """Sends at a fixed rate whatever the server does; latency from the scheduled time.

    A timer tick enqueues every request that is due; an idle connection takes it at once,
    else it waits in a backlog and the wait counts in its latency (as in wrk2). Protocol
    callbacks, no task per request: the client must cost far less CPU than the server.
    """

    def __init__(self, port: int, key: str, make_body: Callable[[], bytes]) -> None:
        self.port = port
        self.head = (
            f"POST {PING_PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n"
            "Content-Length: "
        ).encode()
        self.make_body = make_body
        self.idle: deque[_Conn] = deque()
        self.backlog: deque[float] = deque()
        self.latencies: list[float] = []
        self.scheduled: list[float] = []
        self.statuses: dict[int, int] = {}
        self.errors = 0
        self.outstanding = 0

    def request(self) -> bytes:
        body = self.make_body()
        return self.head + str(len(body)).encode() + b"\r\n\r\n" + body

    def submit(self, intended: float) -> None:
        self.outstanding += 1
        if self.idle:
            self.idle.popleft().send(intended, self.request())
        else:
            self.backlog.append(intended)

    def done(self, conn: _Conn, intended: float, status: int) -> None:
        self.latencies.append(time.perf_counter() - intended)
        self.scheduled.append(intended)
        self.statuses[status] = self.statuses.get(status, 0) + 1
        self.outstanding -= 1
        if self.backlog:
            conn.send(self.backlog.popleft(), self.request())
        else:
            self.idle.append(conn)

    def lost(self, conn: _Conn) -> None:
        """A connection closed: its request (if any) failed; the others carry on."""
        with contextlib.suppress(ValueError):
            self.idle.remove(conn)
        if conn.busy:
            conn.busy = False
            self.errors += 1
            self.outstanding -= 1


async def _open_loop(
    port: int,
    key: str,
    make_body: Callable[[], bytes],
    rate: float,
    duration_s: float,
    connections: int,
    event: tuple[float, Callable[[], tuple[float, float]]] | None = None,
) -> dict[str, Any]:
    """``event``: (at_s, fn): ``fn`` runs in a thread ``at_s`` into the run and returns the
    (start, end) of what it did in ``time.perf_counter()`` time; the run goes on until 1 s
    after it ended, and the latencies of requests scheduled within it (plus 0.5 s) are
    reported apart."""
    loop = asyncio.get_running_loop()
    client = _OpenLoop(port, key, make_body)
    fired: list[asyncio.Future[tuple[float, float]]] = []
    conns = []
    for _ in range(connections):
        _, conn = await loop.create_connection(lambda: _Conn(client), "127.0.0.1", port)
        conns.append(conn)
        client.idle.append(conn)
    n = int(rate * duration_s)
    t0 = time.perf_counter()
    if event is not None:
        at_s, fn = event
        loop.call_later(at_s, lambda: fired.append(loop.run_in_executor(None, fn)))
    sent = 0
    while True:
        elapsed_s = time.perf_counter() - t0
        if sent >= n:
            # With an event, go on until it has ended and 1 s more (at most 300 s).
            running = event is not None and (not fired or not fired[0].done())
            if not running or elapsed_s > 300:
                break
            n = max(n, int((elapsed_s + 1.0) * rate))
        due = min(n, int(elapsed_s * rate) + 1)
        while sent < due:
            client.submit(t0 + sent / rate)
            sent += 1
        await asyncio.sleep(0.001)  # a 1 ms tick: late sends count in the latency
    deadline = time.perf_counter() + 30
    while client.outstanding > 0 and time.perf_counter() < deadline:
        await asyncio.sleep(0.01)
    elapsed = time.perf_counter() - t0
    for conn in conns:
        if conn.transport is not None:
            conn.transport.close()
    latencies, statuses = client.latencies, client.statuses
    ms = np.array(latencies) * 1000 if latencies else np.array([float("nan")])
    extra: dict[str, Any] = {}
    if fired:
        start, end = await asyncio.wait_for(fired[0], 120)
        at = np.array(client.scheduled)
        inside = (at >= start) & (at <= end + 0.5)
        during, outside = ms[inside], ms[~inside]
        extra["event"] = {
            "seconds": round(end - start, 3),
            "requests_during": int(inside.sum()),
            "during_p99_ms": round(float(np.percentile(during, 99)), 3) if len(during) else None,
            "during_max_ms": round(float(during.max()), 3) if len(during) else None,
            "outside_p99_ms": round(float(np.percentile(outside, 99)), 3),
            "outside_max_ms": round(float(outside.max()), 3),
        }
    return {
        "rate": round(rate, 1),
        "requests": len(latencies),
        "achieved_rps": round(len(latencies) / elapsed, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p90_ms": round(float(np.percentile(ms, 90)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
        "p999_ms": round(float(np.percentile(ms, 99.9)), 3),
        "max_ms": round(float(ms.max()), 3),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        # Requests that never got an answer (lost connections, or still queued when the
        # 30 s grace ran out) and error statuses.
        "errors": (n - len(latencies)) + sum(v for k, v in statuses.items() if k >= 400),
        **extra,
    }


def run_open_loop(
    port: int,
    key: str,
    make_body: Callable[[], bytes],
    rate: float,
    duration_s: float,
    connections: int,
    event: tuple[float, Callable[[], tuple[float, float]]] | None = None,
) -> dict[str, Any]:
    import uvloop

    return uvloop.run(_open_loop(port, key, make_body, rate, duration_s, connections, event))


# --- the phases ---------------------------------------------------------------------------------


def _index_versions(port: int, workers: int) -> set[int]:
    """The index versions the workers report (each /readyz lands on some worker). Few calls:
    /readyz queries the database and Redis, load the measurement must not add much to."""
    seen = set()
    for _ in range(2 * workers):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as resp:
            seen.add(int(orjson.loads(resp.read())["index"]["version"]))
    return seen


def rebuild_index(db_url: str, port: int, workers: int) -> tuple[float, float]:
    """Make every worker rebuild its whole index (a new data version, as an import would
    make) and wait until they all serve it; returns (start, end), ``perf_counter`` time."""
    start = time.perf_counter()
    with psycopg.connect(db_url, autocommit=True) as conn:
        row = conn.execute(
            "UPDATE data_versions SET version = version + 1 WHERE name = 'geofences'"
            " RETURNING version"
        ).fetchone()
    assert row is not None
    target = int(row[0])
    deadline = start + 120
    while time.perf_counter() < deadline:
        if _index_versions(port, workers) == {target}:
            return start, time.perf_counter()
        time.sleep(0.2)
    raise RuntimeError(f"the index did not reach version {target} within 120 s")


def metrics(port: int) -> dict[str, float]:
    """Pings by reason from the service's /metrics (one worker's view with several)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for m in re.finditer(r'^geo_offers_pings_total\{reason="([^"]+)"\} ([0-9.e+]+)$', text, re.M):
        out[m.group(1)] = float(m.group(2))
    return out


def reason_mix(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    total = sum(delta.values()) or 1.0
    return {k: round(v / total, 3) for k, v in sorted(delta.items()) if v > 0}


def offer_campaigns(with_caps: bool) -> bytes:
    """One campaign, every enter: no caps; or loose caps and a budget that never bind."""
    campaign: dict[str, Any] = {
        "id": "bench-every-enter",
        "name": "Bench: every enter",
        "trigger": {"type": "enter"},
        "offer": {
            "title": "Bench treat",
            "message": "Hi {{ first_name | default: 'there' }}, welcome to {{ store.name }}.",
            "value": 1,
            "coupon": {"type": "unique", "prefix": "B-"},
            "expires_in": "2h",
        },
    }
    doc: dict[str, Any] = {"campaigns": [campaign]}
    if with_caps:
        campaign["caps"] = [{"count": 1000, "window": "24h"}]
        campaign["budget"] = {"total": 1_000_000_000, "per_day": 100_000_000}
        doc["policies"] = {"caps": [{"count": 1000, "window": "24h"}], "min_gap": "1s"}
    return orjson.dumps(doc)


def paused_campaign() -> bytes:
    """One campaign, every enter at every store, but paused: it can never fire."""
    doc = orjson.loads(offer_campaigns(with_caps=False))
    doc["campaigns"][0].update(id="bench-paused", status="paused")
    return orjson.dumps(doc)


def import_campaigns(port: int, admin_key: str, data: bytes) -> None:
    boundary = f"bench{random.randrange(16**8):08x}"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="c.json"\r\n'
            f"Content-Type: application/json\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/campaigns/import",
        data=body,
        method="POST",
        headers={
            "Authorization": f"Bearer {admin_key}",
            "Content-Type": f"multipart/form-data; boundary={boundary}",
        },
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        resp.read()


def service_env(db_url: str, redis_url: str, prefix: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("GEO_OFFERS_")
        and k not in ("DATABASE_URL", "REDIS_URL", "PROMETHEUS_MULTIPROC_DIR")
    }
    env.update(
        GEO_OFFERS_DATABASE_URL=db_url,
        GEO_OFFERS_REDIS_URL=redis_url,
        GEO_OFFERS_REDIS_PREFIX=prefix,
        GEO_OFFERS_DEVICE_RATE_PER_S="0",  # the per-device token bucket would 429 the load
        GEO_OFFERS_LOG_LEVEL="WARNING",
    )
    return env


def uvicorn_cmd(app: str, port: int, workers: int) -> list[str]:
    # The service's own settings: uvloop, httptools, no access log (service/cli.py `serve`).
    return [
        sys.executable, "-m", "uvicorn", "--app-dir", str(ROOT / "benchmarks"), app,
        "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
        "--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level", "warning",
    ]  # fmt: skip


def geo_offers(*argv: str, env: dict[str, str]) -> str:
    exe = BIN / "geo-offers"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "service.cli"]
    out = subprocess.run([*cmd, *argv], env=env, cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"geo-offers {' '.join(argv)} failed:\n{out.stderr}")
    return out.stdout.strip()


# --- report -----------------------------------------------------------------------------------


def _fmt_ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def _check(check: str, measured: Any, ok: bool, workers: int = 1) -> dict[str, Any]:
    return {"workers": workers, "check": check, "measured": measured, "pass": ok}


def evaluate(runs: list[dict[str, Any]], open_loop: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's targets, measured against the references of the same run."""
    out = []
    by = {(r["target"], r["workers"]): r for r in runs}
    ol = {(r["target"], r["workers"]): r for r in open_loop if "event" not in r}
    ping, floor, naive = by.get(("service ping", 1)), by.get(("floor", 1)), by.get(("naive", 1))
    if ping and floor:
        ratio = ping["rps"] / floor["rps"]
        out.append(_check(f"steady pings >= {TARGET_VS_FLOOR} x floor", round(ratio, 2),
                          ratio >= TARGET_VS_FLOOR))  # fmt: skip
    if ping and naive:
        ratio = ping["rps"] / naive["rps"]
        out.append(_check(f"steady pings >= {TARGET_VS_NAIVE:g} x naive", round(ratio, 2),
                          ratio >= TARGET_VS_NAIVE))  # fmt: skip
    stay = by.get(("service ping, staying put", 1))
    if stay and floor and naive:  # the same targets on the mix without new visit events
        for ref, name, least in (
            (floor, "floor", TARGET_VS_FLOOR),
            (naive, "naive", TARGET_VS_NAIVE),
        ):
            ratio = stay["rps"] / ref["rps"]
            out.append(_check(f"steady pings, staying put >= {least:g} x {name}",
                              round(ratio, 2), ratio >= least))  # fmt: skip
    new, new_naive = by.get(("service new devices", 1)), by.get(("naive new devices", 1))
    if new and new_naive:
        ratio = new["rps"] / new_naive["rps"]
        out.append(_check(f"new devices near stores >= {TARGET_VS_NAIVE:g} x naive (same fences)",
                          round(ratio, 2), ratio >= TARGET_VS_NAIVE))  # fmt: skip
    paused = by.get(("service new devices, paused campaign", 1))
    if new and paused:
        ratio = paused["rps"] / new["rps"]
        out.append(_check("new devices, a paused campaign present: no slower (>= 0.9 x)",
                          round(ratio, 2), ratio >= 0.9))  # fmt: skip
    for target in ("service offer", "service offer+caps"):
        row = by.get((target, 1))
        if row and naive:
            ratio = row["rps"] / naive["rps"]
            out.append(_check(f"{target} >= {TARGET_OFFER_VS_NAIVE:g} x naive throughput",
                              round(ratio, 2), ratio >= TARGET_OFFER_VS_NAIVE))  # fmt: skip
        lat = ol.get((target, 1))
        if lat:
            ok = lat["p99_ms"] <= TARGET_OFFER_P99_MS and lat["errors"] == 0
            out.append(_check(f"{target} p99 <= {TARGET_OFFER_P99_MS:g} ms at 70 % of its max",
                              lat["p99_ms"], ok))  # fmt: skip
    for w in sorted({r["workers"] for r in open_loop}):
        lat = ol.get(("service ping", w))
        if lat and w == 2:
            ok = lat["p99_ms"] <= TARGET_P99_MS_AT_70 and lat["errors"] == 0
            out.append(_check(f"steady pings p99 <= {TARGET_P99_MS_AT_70:g} ms at 70 % of max, "
                              "open loop", lat["p99_ms"], ok, w))  # fmt: skip
    return out


LABELS = {
    "echo": "raw ASGI echo (ceiling)",
    "floor": "raw ASGI + 1 Redis script (floor)",
    "naive": "naive FastAPI + PostGIS ST_DWithin",
    "service ping": "service ping, no offer",
    "service ping, staying put": "  the same, each device at its own point",
    "service offer": "service offer path (every ping an offer)",
    "service offer+caps": "offer path + loose caps & budget",
    "service new devices": "service, new devices near stores",
    "service new devices, paused campaign": "  the same, one paused campaign",
    "naive new devices": "naive, new devices near stores",
}


def render(result: dict[str, Any]) -> str:
    a = result["config"]
    m = result["machine"]
    lines = [
        f"geo-offers HTTP benchmark, {result['started_at']}",
        f"machine: {m['nproc']} CPU ({m['cpu']}), Python {m['python']}, "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items()),
        f"load average (1/5/15 min) before the run {m.get('loadavg_before', '?')}, after "
        f"{m.get('loadavg_after', '?')} (other work shares this machine)",
        f"{a['fences']:,} circle fences ({a.get('new_fences', 0):,} for the new-device mix); "
        f"wrk {a['threads']} threads x {a['connections']} "
        f"connections, {a['warmup']:g} s warm-up + {a['duration']:g} s per row; uvicorn "
        "uvloop + httptools, no access log; server, PostgreSQL, Redis and wrk share the CPUs",
        "",
        f"{'target':<44}{'workers':>8}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'x echo':>8}{'x floor':>8}{'x naive':>9}{'errors':>8}",
    ]
    by = {(r["target"], r["workers"]): r for r in result["runs"]}
    for r in result["runs"]:
        w = r["workers"]
        echo, floor = by.get(("echo", w)), by.get(("floor", w))
        # The new-device mix has its own naive reference, on its own fences.
        naive = by.get(("naive new devices" if "new devices" in r["target"] else "naive", w))
        lines.append(
            f"{LABELS.get(r['target'], r['target']):<44}{w:>8}{r['rps']:>10,.0f}"
            f"{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}"
            f"{_fmt_ratio(r['rps'] / echo['rps'] if echo else None):>8}"
            f"{_fmt_ratio(r['rps'] / floor['rps'] if floor else None):>8}"
            f"{_fmt_ratio(r['rps'] / naive['rps'] if naive else None):>9}"
            f"{r['non2xx'] + r['socket_errors']:>8}"
        )
    cpu_rows = [r for r in result["runs"] if "cpu_us_per_request" in r]
    if cpu_rows:
        kinds = ["server", "relay", "redis", "postgres", "client"]
        lines += [
            "",
            "CPU per request in the timed runs, µs (server: its worker processes; client: wrk; "
            "cores: all of them together over the run):",
            f"{'target':<44}{'workers':>8}" + "".join(f"{k:>10}" for k in kinds) + f"{'cores':>8}",
        ]
        for r in cpu_rows:
            cpu = r["cpu_us_per_request"]
            cores = sum(cpu.values()) * r["rps"] / 1e6
            lines.append(
                f"{LABELS.get(r['target'], r['target']):<44}{r['workers']:>8}"
                + "".join(f"{cpu.get(k, 0):>10,.0f}" for k in kinds)
                + f"{cores:>8.2f}"
            )
    if result["open_loop"]:
        lines += [
            "",
            "constant rate, open loop (Python asyncio client, latency from the scheduled send "
            "time as in wrk2):",
            f"{'target':<44}{'workers':>8}{'rate':>10}{'client max':>11}{'achieved':>10}"
            f"{'p50 ms':>9}{'p99 ms':>9}{'p99.9 ms':>10}{'max ms':>9}{'errors':>8}",
        ]
        for r in result["open_loop"]:
            cmax = r.get("client_max_rps")
            lines.append(
                f"{r['target']:<44}{r['workers']:>8}{r['rate']:>10,.0f}"
                f"{(f'{cmax:,.0f}' if cmax else '-'):>11}{r['achieved_rps']:>10,.0f}"
                f"{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}{r['p999_ms']:>10.2f}{r['max_ms']:>9.1f}"
                f"{r['errors']:>8}"
            )
            ev = r.get("event")
            if ev:
                lines.append(
                    f"    rebuild + swap took {ev['seconds']:.2f} s; requests sent then (+0.5 s): "
                    f"{ev['requests_during']:,}, p99 {ev['during_p99_ms']} ms, max "
                    f"{ev['during_max_ms']} ms; the rest: p99 {ev['outside_p99_ms']} ms, max "
                    f"{ev['outside_max_ms']} ms"
                )
    if result.get("reasons"):
        lines += ["", "ping reasons (service's /metrics, timed runs):"]
        for k, v in result["reasons"].items():
            lines.append(f"  {k}: " + ", ".join(f"{r} {s:.0%}" for r, s in v.items()))
    if result["targets"]:
        lines += ["", "targets of issue 11 (measured, thresholds not tuned):"]
        for t in result["targets"]:
            verdict = "PASS" if t["pass"] else "FAIL"
            lines.append(f"  [{verdict}] {t['workers']}w  {t['check']}: {t['measured']}")
    c = result.get("counts") or {}
    if c:
        lines += ["", "counts (for capacity.py):"]
        for k, v in c.items():
            if isinstance(v, dict):
                v = ", ".join(f"{kk} {vv}" for kk, vv in v.items())
            lines.append(f"  {k}: {v}")
    if result["startup_s"]:
        lines += ["", "service start-up to /readyz (index of all fences built per worker):"]
        lines += [f"  {k}: {v:.1f} s" for k, v in result["startup_s"].items()]
    return "\n".join(lines)


# --- main -------------------------------------------------------------------------------------


def redis_counts(mon: dict[str, Any], n: int) -> dict[str, Any]:
    """Per request: the service's client round trips, commands run inside its Lua scripts,
    and the mix; the event relay's (its polling, and the stream ``XADD``s) apart."""
    return {
        "round_trips": round(sum(mon["client"].values()) / n, 2),
        "commands_in_lua": round(sum(mon["lua"].values()) / n, 2),
        "by_command": {k: round(v / n, 2) for k, v in sorted(mon["client"].items())},
        "relay": {
            "round_trips": round(sum(mon["relay"].values()) / n, 2),
            "commands_in_lua": round(sum(mon["relay_lua"].values()) / n, 2),
            "by_command": {k: round(v / n, 2) for k, v in sorted(mon["relay"].items())},
        },
    }


def per(delta: dict[str, int], n: float) -> dict[str, float]:
    return {k: round(v / n, 3) for k, v in delta.items() if n}


def sub(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    return {k: a[k] - b.get(k, 0) for k in a}


CONFIG_KEYS = (
    "fences", "new_fences", "threads", "connections", "duration", "warmup", "workers", "naive_pool",
    "open_loop_connections", "seed",
)  # fmt: skip


def run(args: argparse.Namespace, stack: contextlib.ExitStack) -> dict[str, Any]:
    started = datetime.now(UTC)
    load_before = loadavg()
    workdir = Path(tempfile.mkdtemp(prefix="geo-bench-"))
    stack.callback(shutil.rmtree, workdir, True)
    rng = np.random.default_rng(args.seed)
    random.seed(args.seed)
    only = set(args.only.split(",")) if args.only else None

    def wanted(name: str) -> bool:
        return only is None or name in only

    own_redis: PrivateRedis | None = None
    if args.redis_url:
        redis_url = args.redis_url
    else:
        own_redis = PrivateRedis(workdir)
        stack.callback(own_redis.stop)
        redis_url = own_redis.url
    prefix = f"geobench{os.getpid()}"
    if args.redis_url:
        stack.callback(delete_prefix, args.redis_url, prefix)

    log(f"database: creating, migrating, loading {args.fences:,} fences (COPY)")
    t = time.monotonic()
    db = BenchDatabase(args.pg_url)
    stack.callback(db.drop)
    env = service_env(db.url, redis_url, prefix)
    env.update(args.service_settings)
    geo_offers("migrate", env=env)
    fences = make_fences(args.fences, rng)
    db.load_fences(fences)
    sdk_key = geo_offers("keys", "create", "--role", "sdk", "--label", "bench", env=env)
    admin_key = geo_offers("keys", "create", "--role", "admin", "--label", "bench", env=env)
    log(f"database ready in {time.monotonic() - t:.1f} s")
    points = make_points(fences, N_POINTS, rng, inside_share=0.5)
    inside = make_points(fences, N_POINTS, rng, inside_share=1.0)
    near: list[tuple[str, str, int]] = []
    near_env = env
    if wanted("new"):
        log(f"second database: {args.new_fences:,} store fences for the new-device mix")
        near_db = BenchDatabase(args.pg_url)
        stack.callback(near_db.drop)
        near_env = service_env(near_db.url, redis_url, f"{prefix}n")
        near_env.update(args.service_settings)
        geo_offers("migrate", env=near_env)
        near_fences = make_fences(args.new_fences, rng)
        near_db.load_fences(near_fences)
        near_db.copy_keys(db.url)
        near = make_points(near_fences, N_POINTS, rng, 1.0, near_m=NEAR_M)
    lua = write_workload(workdir, sdk_key, points, inside, near)
    b = Bench(args, workdir, lua, sdk_key, admin_key, points, inside, near)
    b.redis = own_redis
    reasons: dict[str, dict[str, float]] = {}
    ready_timeout = args.ready_timeout

    def start_service(workers: int, on: dict[str, str] = env) -> Server:
        port = free_port()
        srv = Server(
            f"service {workers}w",
            [str(BIN / "geo-offers"), "serve", "--host", "127.0.0.1", "--port", str(port),
             "--workers", str(workers)],
            on, port, workdir,
        )  # fmt: skip
        try:
            ready_s = srv.wait_ready("/readyz", ready_timeout)
        except BaseException:
            srv.stop()
            raise
        b.startup_s[f"service {workers}w #{len(b.startup_s) + 1}"] = ready_s
        b.counts.setdefault("service_rss_mb_at_ready", {})[f"{workers}w"] = tree_rss_mb(
            srv.proc.pid, workers
        )
        return srv

    workers_list = [int(w) for w in args.workers.split(",")]
    for w in workers_list:
        if wanted("ping"):
            log(f"service, {w} worker(s)")
            db_before = db.stats()
            srv = start_service(w)
            count_here = own_redis is not None and w == 1
            try:
                cpu0 = own_redis.cpu_s() if own_redis else 0.0
                before = metrics(srv.port)
                b.warm(srv)
                mid = metrics(srv.port)
                scripts0 = own_redis.script_calls() if own_redis else 0
                res = b.measure("service ping", w, srv)
                b.counts.setdefault("service_rss_mb_after_ping_run", {})[f"{w}w"] = tree_rss_mb(
                    srv.proc.pid, w
                )
                after = metrics(srv.port)
                reasons[f"service ping {w}w"] = reason_mix(mid, after)
                if own_redis:
                    # Round trips per ping during the timed run, workers' caches as they come
                    # (the counts below are taken after it, with every device seen before).
                    # wrk's count: /metrics shows one worker's view when there are several.
                    b.counts.setdefault("scripts_per_ping_timed", {})[f"{w}w"] = round(
                        (own_redis.script_calls() - scripts0) / max(1, res.requests), 3
                    )
                if count_here and own_redis:
                    n = sum(after.values()) - sum(before.values())
                    b.counts["redis_cpu_us_per_ping"] = round(
                        (own_redis.cpu_s() - cpu0) * 1e6 / max(1.0, n), 2
                    )
                if wanted("latency"):
                    b.constant_rate("service ping", w, srv.port, res.rps * LOAD_FRACTION)
                if wanted("stay"):
                    # Long enough that nearly every device has pinged at its point before:
                    # then a ping is a visit going on, with no new event to record.
                    b.wrk(srv.port, "stay", STAY_WARMUP_S)
                    stay1 = metrics(srv.port)
                    b.measure("service ping, staying put", w, srv, mode="stay")
                    reasons[f"service ping, staying put {w}w"] = reason_mix(
                        stay1, metrics(srv.port)
                    )
                for fraction in SWAP_FRACTIONS if wanted("swap") else ():
                    rebuild = functools.partial(rebuild_index, db.url, srv.port, w)
                    b.constant_rate(
                        f"service ping, index swap, {fraction:.0%} of max", w, srv.port,
                        res.rps * fraction, event=(args.duration / 3, rebuild),
                    )  # fmt: skip
                if count_here and own_redis:
                    n = args.count_requests
                    with own_redis.monitor() as mon:
                        b.send(srv.port, "ping", n, 400.0)
                    b.counts["redis_per_ping"] = redis_counts(mon, n)
                    # Keys each ping leaves behind (used_memory deltas proved too noisy: the
                    # allocator and client buffers move by more than 2,000 small keys).
                    keys0 = own_redis.key_counts(prefix)
                    b.send(srv.port, "ping", n, 400.0)
                    keys1 = own_redis.key_counts(prefix)
                    b.counts["redis_keys_per_ping"] = {
                        k: round((keys1[k] - keys0.get(k, 0)) / n, 3) for k in keys1
                    }
                    b.counts["redis_key_bytes"] = own_redis.key_sizes(prefix)
                    # The service's default (the bench does not change it): answers kept this long.
                    ttl = Settings.model_fields["ping_answer_ttl_s"].default
                    b.counts["ping_answer_ttl_s"] = ttl
                answered = sum(metrics(srv.port).values())  # since start (exact with 1 worker)
            finally:
                srv.stop()
            if w == 1:
                time.sleep(1.5)  # backends have exited and flushed their counters
                b.counts["pg_per_ping"] = per(sub(db.stats(), db_before), answered)

        if wanted("echo"):
            log(f"raw ASGI echo, {w} worker(s)")
            b.reference(w, "echo", "apps:echo_app", "echo (client floor)", env, wanted("latency"))
        if wanted("floor"):
            log(f"raw ASGI + one Redis script (floor), {w} worker(s)")
            fenv = {**env, "BENCH_FLOOR_REDIS_URL": redis_url, "BENCH_FLOOR_PREFIX": f"{prefix}f"}
            b.reference(
                w,
                "floor",
                "apps:redis_floor_app",
                "floor (1 Redis script)",
                fenv,
                wanted("latency"),
            )
            if args.redis_url:
                delete_prefix(args.redis_url, f"{prefix}f")
        if wanted("naive"):
            log(f"naive FastAPI + PostGIS, {w} worker(s)")
            port = free_port()
            nenv = {**env, "BENCH_NAIVE_DSN": db.url, "BENCH_NAIVE_POOL": str(args.naive_pool)}
            srv = Server(f"naive {w}w", uvicorn_cmd("apps:naive_app", port, w), nenv, port, workdir)
            try:
                srv.wait_ready("/readyz", 60)
                b.warm(srv)
                b.measure("naive", w, srv)
            finally:
                srv.stop()

    if wanted("new"):
        log(f"new devices within {NEAR_M:g} m of {args.new_fences:,} stores, 1 worker")
        # Each row on a fresh service and an empty keyspace of its own prefix: the second
        # row would otherwise run on the first's 100 k+ new devices (a fuller Redis, a full
        # state cache) and pay for that, not for its campaign.
        for target, label, campaigns in (
            ("service new devices", "service new devices 1w", None),
            # The case: one paused campaign present must cost nothing per ping.
            ("service new devices, paused campaign", "service new devices, paused 1w",
             paused_campaign()),
        ):  # fmt: skip
            delete_prefix(redis_url, near_env["GEO_OFFERS_REDIS_PREFIX"])
            srv = start_service(1, near_env)
            try:
                if campaigns is not None:
                    import_campaigns(srv.port, admin_key, campaigns)
                    time.sleep(0.3)
                b.warm(srv, "new")
                mid = metrics(srv.port)
                b.measure(target, 1, srv, mode="new")
                reasons[label] = reason_mix(mid, metrics(srv.port))
            finally:
                srv.stop()
        port = free_port()
        nenv = {**near_env, "BENCH_NAIVE_DSN": near_env["GEO_OFFERS_DATABASE_URL"],
                "BENCH_NAIVE_POOL": str(args.naive_pool)}  # fmt: skip
        srv = Server("naive new", uvicorn_cmd("apps:naive_app", port, 1), nenv, port, workdir)
        try:
            srv.wait_ready("/readyz", 60)
            b.warm(srv, "new")
            b.measure("naive new devices", 1, srv, mode="new")
        finally:
            srv.stop()

    if wanted("offer"):
        for w in workers_list[:1]:  # the offer moment's targets are for one worker
            log(f"offer path, {w} worker(s)")
            time.sleep(1.5)
            db_before = db.stats()
            srv = start_service(w)
            try:
                import_campaigns(srv.port, admin_key, offer_campaigns(with_caps=False))
                time.sleep(args.poll_wait if w > 1 else 0.2)  # other workers poll for it
                before = metrics(srv.port)
                b.warm(srv, "offer")
                mid = metrics(srv.port)
                res = b.measure("service offer", w, srv, mode="offer")
                if wanted("latency"):
                    b.constant_rate(
                        "service offer", w, srv.port, res.rps * LOAD_FRACTION, mode="offer"
                    )
                after = metrics(srv.port)
                reasons[f"service offer {w}w"] = reason_mix(mid, after)
                offers = after.get("offer_issued", 0) - before.get("offer_issued", 0)
                if w == 1:
                    import_campaigns(srv.port, admin_key, offer_campaigns(with_caps=True))
                    time.sleep(0.2)
                    if own_redis:
                        with own_redis.monitor() as mon:
                            b.send(srv.port, "offer", args.count_requests // 4, 200.0)
                        b.counts["redis_per_offer_with_caps"] = redis_counts(
                            mon, args.count_requests // 4
                        )
                    b.warm(srv, "offer")
                    mid = metrics(srv.port)
                    res = b.measure("service offer+caps", w, srv, mode="offer")
                    if wanted("latency"):
                        b.constant_rate(
                            "service offer+caps", w, srv.port, res.rps * LOAD_FRACTION, "offer"
                        )
                    reasons[f"service offer+caps {w}w"] = reason_mix(mid, metrics(srv.port))
                    offers = metrics(srv.port).get("offer_issued", 0) - before.get(
                        "offer_issued", 0
                    )
            finally:
                srv.stop()
            if w == 1 and offers:
                time.sleep(1.5)
                d = sub(db.stats(), db_before)
                b.counts["pg_per_offer"] = per(d, offers)
                b.counts["pg_offers_measured"] = int(offers)
            # Back to no campaign, so a later round's ping rows stay offer-free.
            with psycopg.connect(db.url, autocommit=True) as conn:
                conn.execute("DELETE FROM campaigns")
                conn.execute("DELETE FROM policies")
                conn.execute(
                    "UPDATE data_versions SET version = version + 1 WHERE name = 'campaigns'"
                )

    config: dict[str, Any] = {k: getattr(args, k) for k in CONFIG_KEYS}
    config["load_fraction"] = LOAD_FRACTION
    result: dict[str, Any] = {
        "started_at": started.strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {**machine_info(), "loadavg_before": load_before, "loadavg_after": loadavg()},
        "config": config,
        "runs": b.runs,
        "open_loop": b.open_loop,
        "reasons": reasons,
        "counts": b.counts,
        "startup_s": b.startup_s,
    }
    result["targets"] = evaluate(b.runs, b.open_loop)
    return result


def delete_prefix(url: str, prefix: str) -> None:
    """Delete our keys from a shared Redis (never FLUSHDB: other people use it)."""
    client = redis.Redis.from_url(url)
    try:
        batch: list[bytes] = []
        for k in client.scan_iter(match=f"{prefix}:*", count=1000):
            batch.append(k)
            if len(batch) >= 1000:
                client.unlink(*batch)
                batch.clear()
        if batch:
            client.unlink(*batch)
    finally:
        client.close()


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _setting(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=VALUE")
    return f"GEO_OFFERS_{name.strip().upper()}", value


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--fences", type=int, default=100_000)
    p.add_argument(
        "--new-fences", type=int, default=NEW_FENCES, help="stores of the new-device mix"
    )
    p.add_argument("--workers", default="1,2", help="comma-separated worker counts, e.g. 1,2")
    p.add_argument(
        "--set",
        dest="service_settings",
        action="append",
        default=[],
        type=_setting,
        metavar="NAME=VALUE",
        help="a setting of the service under test, e.g. event_relay=false (repeatable)",
    )
    p.add_argument("--duration", type=float, default=15.0, help="seconds per timed run")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds of warm-up per target")
    p.add_argument("--threads", type=int, default=2, help="wrk threads")
    p.add_argument("--connections", type=int, default=32, help="wrk connections")
    p.add_argument("--naive-pool", type=int, default=4, help="PostgreSQL connections per worker")
    p.add_argument("--open-loop-connections", type=int, default=64)
    p.add_argument("--count-requests", type=int, default=2000, help="pings for the counts")
    p.add_argument(
        "--only", default=None, help="subset: ping,stay,latency,swap,echo,floor,naive,new,offer"
    )
    p.add_argument(
        "--pg-url",
        default=os.environ.get("GEO_OFFERS_BENCH_PG_URL", DEFAULT_PG_URL),
        help="a database on a server where the bench may create and drop its own database",
    )
    p.add_argument("--redis-url", default=None, help="use this Redis (default: start our own)")
    p.add_argument("--ready-timeout", type=float, default=300.0)
    p.add_argument("--poll-wait", type=float, default=3.0)
    p.add_argument("--seed", type=int, default=5)
    p.add_argument(
        "--py-spy", default=None, help="sample one-worker timed runs with py-spy into this dir"
    )
    p.add_argument("--out", type=Path, default=None, help="JSON path (default results/http-…)")
    args = p.parse_args(argv)
    if shutil.which("wrk") is None:
        print(WRK_INSTALL, file=sys.stderr)
        return 2
    with contextlib.ExitStack() as stack:
        # Ctrl-C or SIGTERM still stops the servers and drops the database.
        signal.signal(signal.SIGTERM, _interrupt)
        result = run(args, stack)
    text = render(result)
    print(text)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = args.out or RESULTS_DIR / f"http-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    result["table"] = text
    out.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    log(f"wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
