"""Index bases: built in a child process, written as files that every worker of a host maps.

A base is a directory ``<root>/<version>-<token>/`` of ``.npy`` files
(:class:`geofences.base.FenceBase`), written under a temporary name and renamed into place,
so a reader sees a whole one or none. ``root`` is per database (a hash of its URL), and the
token is the log row's random token for that version: a file is only reused for the very
data it was built from, even after the database was restored or reset.

One worker per host builds (an exclusive ``flock`` on ``<root>/.lock``; the kernel drops it
if the worker dies); the others wait for the lock and map the result. The build runs in a
fresh child process (``spawn``, lowest CPU priority, dies with its parent, exits after the
build so its memory goes back to the system); if no child can be started it runs in the
calling thread. Old bases are removed once a newer one is in place: a worker that still
maps one keeps its pages until it lets go (Linux keeps an unlinked file's pages alive).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import itertools
import logging
import multiprocessing
import os
import shutil
import uuid
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from sqlalchemy import Engine, create_engine, func, select
from sqlalchemy.pool import NullPool

from geofences.base import FenceBase
from geofences.cover import circle_covers
from geofences.index import release_free_heap
from service.db.models import Geofence
from service.fences import changelog
from service.processes import become_background

log = logging.getLogger("geo_offers.fences")

#: Bases kept in a root besides the newest (workers not yet switched may still map them).
KEEP_OLD = 1
#: Fewer fences than this are built in the calling thread: a child process costs more to
#: start (about a second) than such a build, and holds the GIL only briefly.
CHILD_MIN_FENCES = 20_000
#: Circles per process below which their covers are not worth a process of their own.
PARALLEL_MIN = 100_000


def root_for(index_dir: Path, url: str) -> Path:
    """The directory of one database's bases under ``index_dir``."""
    return index_dir / hashlib.sha256(url.encode()).hexdigest()[:16]


def _name(version: int, token: str) -> str:
    return f"{version:012d}-{token}"


def _parse(name: str) -> tuple[int, str] | None:
    version, _, token = name.partition("-")
    if not version.isdigit() or not token or name.startswith("tmp"):
        return None
    return int(version), token


def _covers_part(args: tuple[Any, Any, Any]) -> tuple[Any, Any, Any]:
    return circle_covers(*args)


def covers_in_processes(
    lat: NDArray[np.float64], lng: NDArray[np.float64], radius: NDArray[np.float64]
) -> tuple[NDArray[np.int8], NDArray[np.uint64], NDArray[np.int64]]:
    """:func:`circle_covers` split over the machine's CPUs (forked from the build child:
    an interpreter with no event loop and no threads of its own). Each circle's cover is
    its own, so the parts put together are the same result."""
    n = len(lat)
    parts = min(os.cpu_count() or 1, max(1, n // PARALLEL_MIN))
    if parts == 1:
        return circle_covers(lat, lng, radius)
    bounds = np.linspace(0, n, parts + 1).astype(np.int64).tolist()
    args = [(lat[a:b], lng[a:b], radius[a:b]) for a, b in itertools.pairwise(bounds)]
    with multiprocessing.get_context("fork").Pool(
        parts, initializer=_child_init, initargs=(os.getpid(),)
    ) as pool:
        out = pool.map(_covers_part, args)
    res = np.concatenate([r for r, _, _ in out])
    cells = np.concatenate([c for _, c, _ in out])
    owners = np.concatenate([o + a for (_, _, o), a in zip(out, bounds, strict=False)])
    return res, cells, owners


def build_base(url: str, root: str, parallel: bool = False) -> str:
    """Read every fence in one snapshot, build the base, write it into ``root``; returns its
    path. Runs in the child process (or, as a fallback, in a thread of the caller)."""
    engine = create_engine(url, poolclass=NullPool)
    try:
        version, token, cols = changelog.read_columns(engine)
    finally:
        engine.dispose()
    final = Path(root) / _name(version, token)
    if final.exists():
        return str(final)
    covers = covers_in_processes if parallel else circle_covers
    base = FenceBase.build(cols, version=version, token=token, covers=covers)
    del cols
    tmp = Path(root) / f"tmp-{uuid.uuid4().hex}"
    base.save(tmp)
    os.rename(tmp, final)
    with contextlib.suppress(OSError):  # make the rename itself durable
        fd = os.open(root, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    del base
    release_free_heap()
    return str(final)


def _child_init(parent_pid: int) -> None:
    """Lowest CPU priority (a rebuild is background work), and stop when the parent exits."""
    become_background(19, parent_pid)


def new_pool() -> ProcessPoolExecutor:
    """One child for one build: a fresh interpreter (``spawn``: not a fork of a running
    event loop), gone after its task."""
    return ProcessPoolExecutor(
        max_workers=1,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_child_init,
        initargs=(os.getpid(),),
        max_tasks_per_child=1,
    )


def _build_in_child(url: str, root: Path) -> str:
    pool = new_pool()
    try:
        return pool.submit(build_base, url, str(root), True).result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


class BaseStore:
    """The bases of one database on this host (see the module docstring)."""

    def __init__(self, engine: Engine, index_dir: Path, in_child: bool = True) -> None:
        self._engine = engine
        self._url = engine.url.render_as_string(hide_password=False)
        self.root = root_for(index_dir, engine.url.render_as_string(hide_password=True))
        self.in_child = in_child
        self.builds = 0  # bases this process built (the others it found)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _bases(self) -> list[tuple[int, str, Path]]:
        found = []
        for p in self.root.iterdir():
            parsed = _parse(p.name)
            if parsed is not None and p.is_dir():
                found.append((*parsed, p))
        # Newest data first; among bases of one version (other tokens: a database that was
        # reset or restored), the most recently written first.
        return sorted(found, key=lambda b: (b[0], b[2].stat().st_mtime), reverse=True)

    def acquire(self, min_version: int) -> FenceBase:
        """A base of the current data at ``min_version`` or later, found (else built) and
        mapped while the lock is held (so no builder removes it first). Blocks: call it in
        a thread."""
        with self._locked():
            for p in self.root.iterdir():  # left by a builder that died (we hold the lock)
                if p.name.startswith("tmp-"):
                    shutil.rmtree(p, ignore_errors=True)
            bases = [b for b in self._bases() if b[0] >= min_version]
            if bases:
                with self._engine.connect() as conn:
                    known = changelog.tokens(conn, [v for v, _, _ in bases])
                for version, token, path in bases:
                    if known.get(version) == token:
                        return FenceBase.open(path)
            path = self._build()
            self.builds += 1
            base = FenceBase.open(path)
            for _, _, old in [b for b in self._bases() if b[2] != path][KEEP_OLD:]:
                shutil.rmtree(old, ignore_errors=True)
            return base

    def _build(self) -> Path:
        with self._engine.connect() as conn:
            big = conn.execute(select(func.count()).select_from(Geofence)).scalar_one()
        if self.in_child and big >= CHILD_MIN_FENCES:
            try:
                return Path(_build_in_child(self._url, self.root))
            except (BrokenProcessPool, OSError, RuntimeError, AssertionError) as exc:
                # (AssertionError: multiprocessing refuses children to a daemonic process.)
                log.warning(
                    "index build process unavailable; building in a thread instead",
                    extra={"event": "index_build_fallback", "error": repr(exc)},
                )
        return Path(build_base(self._url, str(self.root)))
