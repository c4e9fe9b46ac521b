"""Index builds in a child process: the assembled index is the one a direct build makes."""

from __future__ import annotations

import asyncio
import gc
import io
import os
import random
import subprocess
import sys
import time

import pytest
from sqlalchemy import Engine

from geofences.index import FenceIndex
from geofences.model import FenceRecord
from service.db.engine import make_engine
from service.fences import builder
from service.fences import repository as repo
from service.fences.builder import assemble, build_index, build_payload
from service.fences.service import import_fences
from service.settings import Settings
from tests.helpers import offset


def _csv(n: int) -> bytes:
    rng = random.Random(7)
    lines = ["store_id,name,lat,lng,radius_m,tags,timezone"]
    for i in range(n):
        lat, lng = 40.7 + rng.random() * 0.1, -74.0 + rng.random() * 0.1
        lines.append(f"s{i},Store {i},{lat:.6f},{lng:.6f},{rng.choice([45.72, 100, 800])},a;b,")
    return ("\n".join(lines) + "\n").encode()


POLY = (
    b'{"type":"FeatureCollection","features":[{"type":"Feature","properties":{"store_id":"p1",'
    b'"name":"Mall"},"geometry":{"type":"Polygon","coordinates":[[[-73.99,40.74],[-73.98,40.74],'
    b"[-73.98,40.75],[-73.99,40.75],[-73.99,40.74]],[[-73.986,40.744],[-73.984,40.744],"
    b"[-73.984,40.746],[-73.986,40.746],[-73.986,40.744]]]}}]}"
)


@pytest.fixture
def engine(pg_settings: Settings) -> Engine:
    engine = make_engine(pg_settings)
    import_fences(engine, io.BytesIO(_csv(3000)), "s.csv")
    import_fences(engine, io.BytesIO(POLY), "p.geojson")
    return engine


def _direct(engine: Engine) -> FenceIndex:
    with engine.connect() as conn:
        return FenceIndex.build(list(repo.iter_records(conn)), version=repo.current_version(conn))


def test_assembled_index_matches_a_direct_build(engine: Engine) -> None:
    direct = _direct(engine)
    payload = build_payload(engine.url.render_as_string(hide_password=False), chunk=256)
    assert len(payload[3]) == -(-3001 // 256), "records travel in chunks"
    built = assemble(payload)
    assert built.version == direct.version and len(built) == len(direct) == 3001
    assert built.stats() == direct.stats()
    rng = random.Random(3)
    pings = [(40.7 + rng.random() * 0.1, -74.0 + rng.random() * 0.1) for _ in range(3000)]
    pings += [offset(40.745, -73.985, 0, 10), (40.745, -73.985), (40.7405, -73.9895)]
    for lat, lng in pings:
        want = [(m.fence.store_id, m.distance_m) for m in direct.match(lat, lng)]
        assert [(m.fence.store_id, m.distance_m) for m in built.match(lat, lng)] == want
    s1 = built.get("s1")
    assert s1 is not None and s1.tags == ("a", "b") and built.get("p1") is not None


def test_build_index_uses_a_child_process(engine: Engine) -> None:
    index = asyncio.run(build_index(engine))
    assert len(index) == 3001
    pool = builder._pool
    assert pool is not None, "the child process pool is kept for the next rebuild"
    pids = {p.pid for p in pool._processes.values()}  # type: ignore[union-attr]
    assert pids and os.getpid() not in pids


def test_entries_refer_to_given_records() -> None:
    recs = [FenceRecord("a", "A", 1.0, 2.0, radius_m=50.0)]
    cells, owners = FenceIndex.build(recs).entries_arrays()
    with pytest.raises(ValueError, match="more fences"):
        FenceIndex.from_entries([], cells, owners)
    with pytest.raises(ValueError, match="duplicate"):
        FenceIndex.from_entries(recs * 2, cells, owners)


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
        "import os, sys, time\n"
        "from service.fences import builder\n"
        "print(builder._get_pool().submit(os.getpid).result(), flush=True)\n"
        "time.sleep(120)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert child != parent.pid and _alive(child)
    finally:
        parent.kill()  # SIGKILL: no atexit, no clean shutdown
        parent.wait()
    deadline = time.monotonic() + 10
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child), "the build child outlived its parent"


def test_overlapping_assemblies_restore_gc_and_switch_interval(engine: Engine) -> None:
    interval = sys.getswitchinterval()
    assert gc.isenabled()

    async def two() -> list[FenceIndex]:
        return list(await asyncio.gather(build_index(engine), build_index(engine)))

    first, second = asyncio.run(two())
    assert len(first) == len(second) == 3001
    assert gc.isenabled() and sys.getswitchinterval() == interval
