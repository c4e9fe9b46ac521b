"""Replicas follow fence changes through the change log, on real PostGIS.

Two app instances (replicas) on one database: imports and deletes through one are applied
as deltas by both; a gap in the log, a "rebuild" version and a database reset each make a
full load; workers of one host share one base file, never reused for other data.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import Engine

from service.db.engine import make_engine
from service.fences import changelog
from service.fences.live import IndexHolder
from service.fences.service import import_fences
from service.settings import Settings
from tests.helpers import ago, iso, offset
from tests.service.conftest import Api, _make_api

POLY = (
    b'{"type":"FeatureCollection","features":[{"type":"Feature","properties":{"store_id":"p1",'
    b'"name":"Mall"},"geometry":{"type":"Polygon","coordinates":[[[-73.99,40.74],[-73.98,40.74],'
    b"[-73.98,40.75],[-73.99,40.75],[-73.99,40.74]],[[-73.986,40.744],[-73.984,40.744],"
    b"[-73.984,40.746],[-73.986,40.746],[-73.986,40.744]]]}}]}"
)


def _csv(rows: list[tuple[str, float, float, float]]) -> bytes:
    lines = ["store_id,name,lat,lng,radius_m,timezone"]
    lines += [f"{s},Store {s},{lat!r},{lng!r},{r},America/New_York" for s, lat, lng, r in rows]
    return ("\n".join(lines) + "\n").encode()


def _grid(n: int, prefix: str = "s") -> list[tuple[str, float, float, float]]:
    return [
        (f"{prefix}{i}", 40.70 + (i // 50) * 0.002, -74.0 + (i % 50) * 0.002, 45.72)
        for i in range(n)
    ]


def _import(api: Api, body: bytes, name: str = "s.csv", **params: str) -> dict:
    r = api.client.post(
        "/v1/geofences/import", files={"file": (name, io.BytesIO(body))}, params=params,
        headers=api.admin,
    )  # fmt: skip
    assert r.status_code == 200, r.text[:500]
    return r.json()


def _inside(api: Api, lat: float, lng: float, device: str) -> list[str]:
    body = {"device_id": device, "lat": lat, "lng": lng, "accuracy_m": 5, "timestamp": iso(ago(1))}
    r = api.client.post("/v1/locations", json=body, headers=api.sdk)
    assert r.status_code == 200, r.text
    return sorted(e["store_id"] for e in r.json()["events"] if e["type"] == "enter")


def _holder(api: Api) -> IndexHolder:
    holder: IndexHolder = api.app_state.index_holder
    return holder


def _until(check: Callable[[], bool], timeout_s: float = 10.0) -> float:
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < timeout_s, "replica did not catch up"
        time.sleep(0.02)
    return time.monotonic() - started


@pytest.fixture
def replicas(pg_settings: Settings, tmp_path: Path) -> Iterator[tuple[Api, Api]]:
    """Two replicas on one database, each with its own index directory (two hosts)."""
    with contextlib.ExitStack() as stack:
        a = stack.enter_context(contextlib.contextmanager(_make_api)(pg_settings))
        other = pg_settings.model_copy(update={"index_dir": tmp_path / "host-b"})
        b = stack.enter_context(contextlib.contextmanager(_make_api)(other))
        yield a, b


def test_deltas_reach_both_replicas(replicas: tuple[Api, Api]) -> None:
    a, b = replicas
    base_b = _holder(b).index.base  # type: ignore[union-attr]
    out = _import(a, _csv(_grid(300)))
    assert out["created"] == 300
    assert _holder(a).version == out["version"], "the import answers once its replica serves it"
    _until(lambda: _holder(b).version == out["version"])
    lat, lng = offset(40.70, -74.0, 90, 20)
    assert _inside(a, lat, lng, "d1") == ["s0"] and _inside(b, lat, lng, "d2") == ["s0"]

    # a move, a radius change, a polygon and a delete, each one delta
    _import(a, _csv([("s0", 40.80, -74.0, 45.72), ("s1", 40.70, -73.998, 500.0)]))
    _import(a, POLY, "p.geojson")
    r = a.client.delete("/v1/geofences/s2", headers=a.admin)
    assert r.status_code == 204
    version = _holder(a).version
    _until(lambda: _holder(b).version == version)
    for api, dev in ((a, "x"), (b, "y")):
        assert _inside(api, lat, lng, dev + "1") == ["s1"]  # s0 moved away; s1 grew
        assert _inside(api, 40.80, -74.0, dev + "2") == ["s0"]
        assert _inside(api, 40.70, -73.996, dev + "3") == ["s1"]  # s2 is gone, s1 covers it
        assert _inside(api, 40.741, -73.989, dev + "4") == ["p1"]
        assert _holder(api).index.get("s2") is None  # type: ignore[union-attr]
    # replica b applied deltas on the base it started with: no full load
    assert _holder(b).index.base is base_b  # type: ignore[union-attr]
    assert len(_holder(b).index) == len(_holder(a).index) == 300  # type: ignore[arg-type]
    page = b.client.get("/metrics").text
    for line in (
        f"geo_offers_fence_index_served_version {float(version)}",  # type: ignore[arg-type]
        "geo_offers_fence_index_live_fences 300.0",
    ):
        assert line in page, line
    applied = [
        ln for ln in page.splitlines() if ln.startswith("geo_offers_fence_deltas_applied_total")
    ]
    assert applied and float(applied[0].split()[-1]) >= 4
    assert "geo_offers_fence_delta_lag_seconds_bucket" in page
    assert 'geo_offers_fence_index_full_loads_total{reason="startup",source="built"}' in page


def test_gap_in_the_log_means_a_full_load(replicas: tuple[Api, Api], postgis_url: str) -> None:
    a, b = replicas
    _import(a, _csv(_grid(50)))
    _until(lambda: _holder(b).version == _holder(a).version)
    base_b = _holder(b).index.base  # type: ignore[union-attr]
    b.app_state.settings.index_poll_s = 3600.0  # (the poller has its period already)
    out = _import(a, _csv([("late", 41.0, -74.0, 45.72)]))
    with psycopg.connect(postgis_url, autocommit=True) as conn:  # as if pruned meanwhile
        conn.execute("DELETE FROM geofence_versions WHERE version = %s", (out["version"],))
    _until(lambda: _holder(b).version == out["version"])
    assert _holder(b).index.base is not base_b  # type: ignore[union-attr]
    assert _holder(b).index.base.version == out["version"]  # type: ignore[union-attr]
    assert _inside(b, 41.0, -74.0, "g1") == ["late"]


def test_a_large_change_is_a_rebuild(pg_settings: Settings, tmp_path: Path) -> None:
    settings = pg_settings.model_copy(update={"index_delta_max": 20})
    with contextlib.contextmanager(_make_api)(settings) as a:
        out = _import(a, _csv(_grid(100)))
        assert _holder(a).version == out["version"]
        assert _holder(a).index.base.version == out["version"]  # type: ignore[union-attr]
        assert _holder(a).index.overlay_size == 0  # type: ignore[union-attr]
        with make_engine(settings).connect() as conn:
            row = conn.execute(
                changelog.select(changelog.V.c.kind).where(changelog.V.c.version == out["version"])
            ).scalar_one()
        assert row == changelog.REBUILD
        out = _import(a, _csv(_grid(5, "t")))  # small: a delta on that base
        assert _holder(a).index.overlay_size == 5  # type: ignore[union-attr]
        assert _inside(a, 40.70, -74.0, "r1") == ["s0", "t0"]


def test_replace_logs_deleted_stores(replicas: tuple[Api, Api]) -> None:
    a, b = replicas
    _import(a, _csv(_grid(10)))
    out = _import(a, _csv(_grid(4)), mode="replace")
    assert out["deleted"] == 6
    _until(lambda: _holder(b).version == out["version"])
    assert len(_holder(b).index) == 4 and "s5" not in _holder(b).index  # type: ignore[arg-type,operator]


@pytest.fixture
def engine(pg_settings: Settings) -> Iterator[Engine]:
    engine = make_engine(pg_settings)
    yield engine
    engine.dispose()


def test_workers_of_a_host_share_one_base(engine: Engine, tmp_path: Path) -> None:
    import_fences(engine, io.BytesIO(_csv(_grid(200))), "s.csv")

    async def two() -> tuple[IndexHolder, IndexHolder]:
        first = IndexHolder(engine, tmp_path / "idx")
        second = IndexHolder(engine, tmp_path / "idx")
        await asyncio.gather(first.refresh(), second.refresh())
        return first, second

    first, second = asyncio.run(two())
    assert first.store.builds + second.store.builds == 1
    assert first.index.base.path == second.index.base.path  # type: ignore[union-attr]
    assert len(first.index) == len(second.index) == 200  # type: ignore[arg-type]


def test_a_base_is_never_reused_for_other_data(
    engine: Engine, tmp_path: Path, postgis_url: str
) -> None:
    import_fences(engine, io.BytesIO(_csv(_grid(30))), "s.csv")
    holder = IndexHolder(engine, tmp_path / "idx")
    asyncio.run(holder.refresh())
    first = holder.index.base.path  # type: ignore[union-attr]
    with psycopg.connect(postgis_url, autocommit=True) as conn:  # a reset database
        conn.execute("TRUNCATE geofences, geofence_versions, geofence_changes")
        conn.execute("UPDATE data_versions SET version = 0 WHERE name = 'geofences'")
    import_fences(engine, io.BytesIO(_csv(_grid(7, "other"))), "s.csv")
    again = IndexHolder(engine, tmp_path / "idx")
    asyncio.run(again.refresh())
    assert again.store.builds == 1 and again.index.base.path != first  # type: ignore[union-attr]
    assert len(again.index) == 7 and "s0" not in again.index  # type: ignore[arg-type,operator]


def test_a_child_builds_large_bases(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from service.fences import builder

    import_fences(engine, io.BytesIO(_csv(_grid(60))), "s.csv")
    monkeypatch.setattr(builder, "CHILD_MIN_FENCES", 10)
    holder = IndexHolder(engine, tmp_path / "idx")
    seen: list[str] = []
    real = builder._build_in_child
    monkeypatch.setattr(builder, "_build_in_child", lambda *a: seen.append("child") or real(*a))
    asyncio.run(holder.refresh())
    assert seen == ["child"] and len(holder.index) == 60  # type: ignore[arg-type]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            state = next(line for line in f if line.startswith("State:"))
    except (FileNotFoundError, ProcessLookupError):
        return False
    return "Z" not in state.split()[1]  # a zombie has exited (only not reaped yet)


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc")
def test_the_build_child_dies_with_its_parent() -> None:
    code = (
        "import os, time\n"
        "from service.fences import builder\n"
        "pool = builder.new_pool()\n"
        "pool.submit(time.sleep, 120)\n"  # the child is busy when its parent dies
        "while not pool._processes: time.sleep(0.05)\n"
        "print(next(iter(pool._processes)), flush=True)\n"
        "time.sleep(120)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert child != parent.pid
        time.sleep(1.0)
        assert _alive(child)
    finally:
        parent.kill()  # SIGKILL: no atexit, no clean shutdown
        parent.wait()
    deadline = time.monotonic() + 10
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child), "the build child outlived its parent"


def test_covers_in_processes_equal_the_serial_covers(monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np

    from geofences.cover import circle_covers
    from service.fences import builder

    monkeypatch.setattr(builder, "PARALLEL_MIN", 100)
    monkeypatch.setattr(builder.os, "cpu_count", lambda: 3)
    rng = np.random.default_rng(5)
    lat, lng = rng.uniform(-80, 80, 1000), rng.uniform(-180, 180, 1000)
    radius = rng.choice([10.0, 45.72, 1000.0, 10_000.0], 1000)
    want = circle_covers(lat, lng, radius)
    got = builder.covers_in_processes(lat, lng, radius)
    assert (got[0] == want[0]).all()
    pairs = lambda r: sorted(zip(r[2].tolist(), r[1].tolist(), strict=True))  # noqa: E731
    assert pairs(got) == pairs(want)


def test_large_replace_keeps_stores_whose_row_was_bad(replicas: tuple[Api, Api]) -> None:
    a, b = replicas
    _import(a, _csv(_grid(1500)))  # more than BATCH rows: the staging (COPY) path
    body = _csv(_grid(1200)) + b"s1300,Store s1300,95.0,-74.0,45.72,America/New_York\n"
    out = _import(a, body, mode="replace", on_error="skip")
    assert (out["unchanged"], out["skipped"], out["deleted"]) == (1200, 1, 299)
    _until(lambda: _holder(b).version == out["version"])
    for api in (a, b):
        index = _holder(api).index
        assert index is not None and len(index) == 1201
        assert "s1300" in index and "s1299" not in index and "s1400" not in index


def test_a_large_overlay_is_compacted_into_a_new_base(engine: Engine, tmp_path: Path) -> None:
    import_fences(engine, io.BytesIO(_csv(_grid(40))), "s.csv")

    async def run() -> IndexHolder:
        # A delta of 3 moved stores is an overlay of 6 (3 hidden base rows, 3 new fences):
        # past compact_at=8 only after the second delta, so the new base is at version 3+.
        holder = IndexHolder(engine, tmp_path / "idx", compact_at=8)
        await holder.refresh()
        first = holder.index.base  # type: ignore[union-attr]
        for i in range(3):
            rows = [(f"s{3 * i + j}", 41.0 + i * 0.01, -74.0 + j * 0.01, 45.72) for j in range(3)]
            await asyncio.to_thread(import_fences, engine, io.BytesIO(_csv(rows)), "c.csv")
            await holder.refresh()
        task = holder._compaction
        if task is not None:
            await task
        await holder.refresh()
        assert holder.index.base is not first  # type: ignore[union-attr]
        return holder

    holder = asyncio.run(run())
    index = holder.index
    # the new base holds at least the first two deltas; what came after is overlay
    assert index is not None and index.base.version >= 3 and len(index) == 40
    assert index.overlay_size <= 6 and holder.store.builds == 2
    assert [m.fence.store_id for m in index.match(41.02, -73.99)] == ["s7"]
    assert index.match(40.70, -74.0) == []  # s0 moved away
