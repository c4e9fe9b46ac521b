"""Index builds in a separate process, so a rebuild under load does not stall the pings.

Built in a thread of the serving process, a rebuild held the GIL for most of its run: at
100 k fences, pings sent during a 10 s rebuild waited up to 5.3 s (p99), against 47 ms
without one (``benchmarks/bench_http.py --only ping,swap``). Here a child process reads the
fences from the database and computes the H3 covers (the costly part); this process only
receives the cell table as arrays and the records in small pickled chunks, and assembles
the index in a worker thread, chunk by chunk, so the event loop gets the GIL back every
few milliseconds.

The first index of a process is built in a thread (nothing is served yet). Rebuilds go to
one child per serving process, started right after that first build (:func:`prestart`;
``spawn``: a fresh interpreter, not a fork of a running event loop) and kept for the next
one. It runs at the lowest CPU priority (``nice`` 19), so on a busy machine a rebuild takes
longer rather than slowing pings. It dies with its parent (Linux ``PR_SET_PDEATHSIG``;
elsewhere it ends when it finds its parent's pipe closed), so a killed replica leaves no
process behind. If the child
cannot be used (it died, or the platform has no process support) the build falls back to
a thread here, with a warning.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ctypes
import gc
import itertools
import logging
import multiprocessing
import os
import pickle
import signal
import sys
import threading
import time
from collections.abc import Iterator
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

#: Records made between two pauses of the assembly (about a millisecond's work).
SLICE = 500
#: Assembly sleeps this many times as long as it worked (see :func:`assemble`): at most a
#: quarter of the GIL goes to it, the rest stays with the pings.
PAUSE = 3.0

_pool: ProcessPoolExecutor | None = None
_pool_lock = threading.Lock()

Row = tuple[Any, ...]
Payload = tuple[int, NDArray[np.uint64], NDArray[np.int32], list[bytes]]


def _to_row(r: FenceRecord) -> Row:
    return (
        r.store_id, r.name, r.lat, r.lng, r.radius_m, r.geometry, r.tags, r.timezone,
        r.address, dict(r.extra) if r.extra else None,
    )  # fmt: skip


def _from_row(row: Row, share: repo.Shared) -> FenceRecord:
    store_id, name, lat, lng, radius_m, geometry, tags, tz, address, extra = row
    return FenceRecord(
        store_id, name, lat, lng, share(radius_m), geometry, share.tags(tags), sys.intern(tz),
        address, extra or NO_EXTRA,
    )  # fmt: skip


def build_payload(url: str, chunk: int = CHUNK, pause: float = PAUSE) -> Payload:
    """In the child: read every fence, build the index, return it in transferable parts."""
    engine = create_engine(url, poolclass=NullPool)
    records: list[FenceRecord] = []
    try:
        with engine.connect() as conn:
            version = repo.current_version(conn)
            rows = repo.iter_records(conn)
            while True:  # read at a quarter of full speed: PostgreSQL serves it at nice 0
                started = time.perf_counter()
                batch = list(itertools.islice(rows, CHUNK))
                if not batch:
                    break
                records.extend(batch)
                time.sleep((time.perf_counter() - started) * pause)
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


def assemble(payload: Payload, pause: float = PAUSE) -> FenceIndex:
    """In this process (a worker thread): the index from a child's parts, no covers computed.

    Records, and the fences the index makes of them, are made ``SLICE`` at a time; after
    each slice the thread sleeps ``pause`` times as long as the slice took, so it takes at
    most 1 / (1 + pause) of the GIL from the pings it shares the process with.
    """
    version, cells, owners, chunks = payload
    share = repo.Shared()

    def records() -> Iterator[FenceRecord]:
        for blob in chunks:
            rows = pickle.loads(blob)
            for i in range(0, len(rows), SLICE):
                started = time.perf_counter()
                # The consumer makes each record's fence before asking for the next, so the
                # time measured here covers both.
                yield from [_from_row(row, share) for row in rows[i : i + SLICE]]
                time.sleep((time.perf_counter() - started) * pause)

    return FenceIndex.from_entries(records(), cells, owners, version=version)


def release_slowly(box: list[FenceIndex | None], pause: float = PAUSE) -> None:
    """Free the index in ``box`` (its only reference) a slice at a time, in a worker thread.

    Dropped in one go on the event loop, a 100 k-fence index took 22 ms to deallocate (one
    C-level cascade that never lets go of the GIL). Here the fences are taken out first, the
    index's own tables freed, then the fences in slices with pauses between them.
    """
    index = box.pop() if box else None
    if index is None:
        return
    fences = list(index)
    del index
    while fences:
        started = time.perf_counter()
        del fences[-CHUNK:]
        time.sleep((time.perf_counter() - started) * pause)


def _child_init() -> None:
    """Initializer of the child: lowest CPU priority, and stop when the parent exits.

    A rebuild is background work: on a busy machine it should take spare CPU, not the
    serving processes' (at normal priority the child's core-second per 10 k fences pushed a
    2-vCPU machine at 70 % load into queueing: p99 600 ms during a rebuild at 100 k fences).
    """
    with contextlib.suppress(OSError, AttributeError):
        os.nice(19)
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
                initializer=_child_init,
            )
        return _pool


def _drop_pool() -> None:
    global _pool
    with _pool_lock:
        pool, _pool = _pool, None
    if pool is not None:
        pool.shutdown(wait=False, cancel_futures=True)


atexit.register(_drop_pool)


def prestart() -> None:
    """Start the child now (it imports its modules at nice 19), so that the first rebuild
    under load does not pay for a new interpreter: measured at 1,500 req/s, pings waited
    p50 8-53 ms for the 1.5 s the child took to start. The idle child costs memory (see the
    README); returns at once."""
    with contextlib.suppress(OSError, RuntimeError, AssertionError):
        _get_pool().submit(os.getpid)


_assembly_lock = threading.Lock()
_assemblies = 0  # in progress in this process (several index holders: tests, embedding)
_saved: tuple[bool, float] = (True, 0.005)


@contextlib.contextmanager
def _assembling() -> Iterator[None]:
    """GC off and a 0.5 ms GIL switch interval while any assembly runs in this process; the
    first to start saves the settings and the last to end puts them back."""
    global _assemblies, _saved
    with _assembly_lock:
        if _assemblies == 0:
            _saved = (gc.isenabled(), sys.getswitchinterval())
            gc.disable()
            sys.setswitchinterval(min(_saved[1], 0.0005))
        _assemblies += 1
    try:
        yield
    finally:
        with _assembly_lock:
            _assemblies -= 1
            if _assemblies == 0:
                sys.setswitchinterval(_saved[1])
                if _saved[0]:
                    gc.enable()


def _url(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=False)


async def build_index(engine: Engine, in_child: bool = True, pause: float = PAUSE) -> FenceIndex:
    """The current fences' index, built in the child process (see the module docstring), or
    in a thread of this process with ``in_child=False``. ``pause`` paces the database read
    and the assembly (0: full speed, for a caller that waits for the result)."""
    url = _url(engine)
    if not in_child:
        return await anyio.to_thread.run_sync(_build_here, engine)
    try:
        payload = await asyncio.wrap_future(_get_pool().submit(build_payload, url, CHUNK, pause))
    except (BrokenProcessPool, OSError, RuntimeError, AssertionError) as exc:
        # (AssertionError: multiprocessing refuses children to a daemonic process.)
        _drop_pool()
        log.warning(
            "index build process unavailable; building in a thread instead",
            extra={"event": "index_build_fallback", "error": repr(exc)},
        )
        payload = await anyio.to_thread.run_sync(build_payload, url, CHUNK, pause)
    # The cyclic GC, triggered by the new index's allocations, stopped the world for up to
    # 68 ms per collection during assembly (100 k fences). Off meanwhile; then the new
    # objects are frozen (moved out of the GC's sight: the index is long-lived and acyclic)
    # before it is back on, else its first collection would walk them all (30 ms).
    # And a shorter GIL switch interval meanwhile (5 ms by default): whenever the assembling
    # thread holds the GIL, the event loop waits up to that long for it, at every pass.
    with _assembling():
        index = await anyio.to_thread.run_sync(assemble, payload, pause)
        gc.freeze()
        return index
