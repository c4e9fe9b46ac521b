"""Index builds in a separate process, so a rebuild under load does not stall the pings.

Built in a thread of the serving process, a rebuild held the GIL for most of its run: at
100 k fences, pings sent during a 10 s rebuild waited up to 5.3 s (p99), against 47 ms
without one (``benchmarks/bench_http.py --only ping,swap``). Here a child process reads the
fences from the database and computes the H3 covers (the costly part); this process only
receives the cell table as arrays and the records in small pickled chunks, and assembles
the index in a worker thread, chunk by chunk, so the event loop gets the GIL back every
few milliseconds.

The first index of a process is built in a thread (nothing is served yet, and no child
has to start). Rebuilds go to one child per serving process, started on the first rebuild
(``spawn``: a fresh interpreter, not a fork of a running event loop) and kept for the next
one. It dies with its parent (Linux ``PR_SET_PDEATHSIG``; elsewhere it ends when it finds
its parent's pipe closed), so a killed replica leaves no process behind. If the child
cannot be used (it died, or the platform has no process support) the build falls back to
a thread here, with a warning.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ctypes
import logging
import multiprocessing
import os
import pickle
import signal
import sys
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import anyio.to_thread
import numpy as np
from numpy.typing import NDArray
from sqlalchemy import Engine, create_engine
from sqlalchemy.pool import NullPool

from geofences.index import FenceIndex
from geofences.model import NO_EXTRA, FenceRecord
from service.fences import repository as repo

log = logging.getLogger("geo_offers.fences")

#: Records per pickled chunk: unpickling one takes a few milliseconds, the longest the
#: assembling thread holds the GIL without a switch point.
CHUNK = 2_000

_pool: ProcessPoolExecutor | None = None
_pool_lock = threading.Lock()

Row = tuple[Any, ...]
Payload = tuple[int, NDArray[np.uint64], NDArray[np.int32], list[bytes]]


def _to_row(r: FenceRecord) -> Row:
    return (
        r.store_id, r.name, r.lat, r.lng, r.radius_m, r.geometry, r.tags, r.timezone,
        r.address, dict(r.extra) if r.extra else None,
    )  # fmt: skip


def _from_row(row: Row) -> FenceRecord:
    store_id, name, lat, lng, radius_m, geometry, tags, tz, address, extra = row
    return FenceRecord(
        store_id, name, lat, lng, radius_m, geometry,
        # A million rows repeat a few dozen zones and tags: share one string each.
        tuple(sys.intern(t) for t in tags), sys.intern(tz), address, extra or NO_EXTRA,
    )  # fmt: skip


def build_payload(url: str, chunk: int = CHUNK) -> Payload:
    """In the child: read every fence, build the index, return it in transferable parts."""
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            version = repo.current_version(conn)
            records = list(repo.iter_records(conn))
    finally:
        engine.dispose()
    index = FenceIndex.build(records, version=version)
    cells, owners = index.entries_arrays()
    del index
    chunks = [
        pickle.dumps([_to_row(r) for r in records[i : i + chunk]], protocol=5)
        for i in range(0, len(records), chunk)
    ]
    return version, cells, owners, chunks


def _build_here(engine: Engine) -> FenceIndex:
    with engine.connect() as conn:
        version = repo.current_version(conn)
        return FenceIndex.build(repo.iter_records(conn), version=version)


def assemble(payload: Payload) -> FenceIndex:
    """In this process (a worker thread): the index from a child's parts, no covers computed."""
    version, cells, owners, chunks = payload
    records: list[FenceRecord] = []
    for blob in chunks:
        records.extend(_from_row(row) for row in pickle.loads(blob))
    return FenceIndex.from_entries(records, cells, owners, version=version)


def _die_with_parent() -> None:
    """Initializer of the child: ask Linux to stop it when its parent exits."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() == 1:  # the parent died before the call: nobody to build for
            os._exit(0)


def _get_pool() -> ProcessPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ProcessPoolExecutor(
                max_workers=1,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_die_with_parent,
            )
        return _pool


def _drop_pool() -> None:
    global _pool
    with _pool_lock:
        pool, _pool = _pool, None
    if pool is not None:
        pool.shutdown(wait=False, cancel_futures=True)


atexit.register(_drop_pool)


def _url(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=False)


async def build_index(engine: Engine, in_child: bool = True) -> FenceIndex:
    """The current fences' index, built in the child process (see the module docstring), or
    in a thread of this process with ``in_child=False``."""
    url = _url(engine)
    if not in_child:
        return await anyio.to_thread.run_sync(_build_here, engine)
    try:
        payload = await asyncio.wrap_future(_get_pool().submit(build_payload, url))
    except (BrokenProcessPool, OSError, RuntimeError) as exc:
        _drop_pool()
        log.warning(
            "index build process unavailable; building in a thread instead",
            extra={"event": "index_build_fallback", "error": repr(exc)},
        )
        payload = await anyio.to_thread.run_sync(build_payload, url)
    return await anyio.to_thread.run_sync(assemble, payload)
