"""The replica's live fence index: a mapped base plus the deltas of the change log.

Pings read ``holder.index``: one attribute, an immutable view, so a ping sees the index
before or after a change, never half of it. A change is read from the log and turned into
a new view (covers and fence objects made) in a worker thread, then swapped in on the event
loop by one assignment. Full loads — at start-up, after a gap in the log, for a "rebuild"
version — map a base file of this host (:mod:`service.fences.builder`, built by one worker
and shared) and then apply the deltas since its version. When the overlay of changes since
the base grows past ``compact_at``, a new base is made in the background while deltas go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from datetime import UTC, datetime
from pathlib import Path

import anyio.to_thread
from sqlalchemy import Engine

from geofences.index import FenceIndex
from service.fences import changelog, metrics
from service.fences.builder import BaseStore

log = logging.getLogger("geo_offers.fences")

#: Full loads in a row (a new "rebuild" version arriving while one loads) before giving up
#: until the next poll.
_MAX_LOADS = 3


class IndexHolder:
    """The replica's current :class:`FenceIndex` (``index``), kept up to date by
    :meth:`refresh` (polled, and awaited by imports and deletes through this replica)."""

    def __init__(
        self,
        engine: Engine,
        index_dir: Path,
        *,
        delta_max: int = 10_000,
        compact_at: int = 20_000,
        in_child: bool = True,
    ) -> None:
        self._engine = engine
        self.store = BaseStore(engine, index_dir, in_child=in_child)
        self.delta_max = delta_max
        self.compact_at = compact_at
        self.index: FenceIndex | None = None
        self.loaded_at: float | None = None
        self._lock = asyncio.Lock()
        self._compaction: asyncio.Task[None] | None = None

    @property
    def version(self) -> int | None:
        return None if self.index is None else self.index.version

    async def refresh(self, force: bool = False) -> bool:
        """Catch up with the store of record; True if the served index changed."""
        async with self._lock:
            if force or self.index is None:
                await self._load(0, "startup" if self.index is None else "forced")
                return True
            return await self._follow()

    async def wait_for(self, version: int, timeout_s: float = 600.0) -> None:
        """Return once this replica serves ``version`` or later (an import's own change).

        The change is committed already: if following it fails (the database went away
        just after), this logs and returns, and the poller catches up later."""
        deadline = time.monotonic() + timeout_s
        while (self.index is None or self.index.version < version) and (
            time.monotonic() < deadline
        ):
            try:
                if not await self.refresh():
                    await asyncio.sleep(0.05)  # not visible to this connection yet
            except Exception:
                log.exception("could not follow a committed fence change; the poller will")
                return

    async def close(self) -> None:
        task, self._compaction = self._compaction, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _follow(self) -> bool:
        index = self.index
        assert index is not None
        plan = await anyio.to_thread.run_sync(
            changelog.read_since, self._engine, index.version, self.delta_max
        )
        if plan is None:
            return False
        if isinstance(plan, changelog.NeedsBuild):
            await self._load(plan.version, plan.reason)
            return True
        new = await anyio.to_thread.run_sync(
            index.with_changes, plan.upserts, plan.deletes, plan.version
        )
        self._swap(new)
        metrics.DELTAS.inc(plan.versions)
        metrics.DELTA_FENCES.inc(len(plan.upserts) + len(plan.deletes))
        if plan.committed_at is not None:
            lag = (datetime.now(UTC) - plan.committed_at).total_seconds()
            metrics.DELTA_LAG.observe(max(0.0, lag))
        if new.overlay_size > self.compact_at and self._compaction is None:
            self._compaction = asyncio.create_task(self._compact())
        return True

    async def _load(self, min_version: int, reason: str) -> None:
        """Map a base of at least ``min_version`` (built here if this host has none), then
        apply the deltas after it."""
        started = time.perf_counter()
        for _ in range(_MAX_LOADS):
            builds = self.store.builds
            base = await anyio.to_thread.run_sync(self.store.acquire, min_version)
            source = "built" if self.store.builds > builds else "mapped"
            index = FenceIndex(base)
            metrics.FULL_BUILDS.labels(reason, source).inc()
            plan = await anyio.to_thread.run_sync(
                changelog.read_since, self._engine, index.version, self.delta_max
            )
            if isinstance(plan, changelog.Delta):
                index = await anyio.to_thread.run_sync(
                    index.with_changes, plan.upserts, plan.deletes, plan.version
                )
            elif isinstance(plan, changelog.NeedsBuild):  # changed again meanwhile
                min_version, reason = plan.version, plan.reason
                continue
            self._swap(index, full=True)
            log.info(
                "index loaded",
                extra={"event": "index_loaded", "version": index.version, "fences": len(index),
                       "reason": reason, "source": source, "path": str(base.path),
                       "seconds": round(time.perf_counter() - started, 3)},
            )  # fmt: skip
            return
        raise RuntimeError("fence data kept changing under full loads; retrying at next poll")

    def _swap(self, index: FenceIndex, full: bool = False) -> None:
        """Serve ``index`` (one assignment on the event loop: pings see old or new)."""
        self.index = index
        self.loaded_at = time.time()
        if full:
            # The long-lived objects of a load, out of the cyclic GC's sight (not after every
            # delta: whatever cyclic garbage exists at that moment would be kept for good).
            gc.freeze()
        metrics.served(index.version, len(index), index.overlay_size)

    async def _compact(self) -> None:
        """A new base at the served version or later, built (or found) in the background;
        then the deltas since it, swapped in under the lock."""
        try:
            index = self.index
            assert index is not None
            builds = self.store.builds
            mapped = await anyio.to_thread.run_sync(self.store.acquire, index.version)
            source = "built" if self.store.builds > builds else "mapped"
            async with self._lock:
                base = FenceIndex(mapped)
                metrics.FULL_BUILDS.labels("compaction", source).inc()
                plan = await anyio.to_thread.run_sync(
                    changelog.read_since, self._engine, base.version, self.delta_max
                )
                if isinstance(plan, changelog.Delta):
                    base = await anyio.to_thread.run_sync(
                        base.with_changes, plan.upserts, plan.deletes, plan.version
                    )
                current = self.index
                if (
                    not isinstance(plan, changelog.NeedsBuild)
                    and current is not None
                    and base.version >= current.version
                ):
                    self._swap(base, full=True)
        except Exception:
            log.exception("index compaction failed; the overlay stays until the next one")
        finally:
            self._compaction = None
