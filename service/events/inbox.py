"""The embedded default's inbox: visit events handed over by the in-process state step, moved
into the event log by a task of the same process.

Without Redis the device state lives in the process, so the step and its events are joined
the way the process allows: :meth:`LocalInbox.add` runs inside the state store's step (no
``await`` between storing the state and queueing its events, so neither happens without
the other), and a task records whatever is queued, in one transaction, as soon as it is
woken — at most one write at a time, everything queued meanwhile going in the next. A
failed write keeps the events queued and is retried. What a crash loses is what the process
held anyway: device states, and the events of the last moments' steps not yet written.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

import anyio.to_thread
from sqlalchemy import Engine

from service.events import log as event_log
from service.events import metrics
from service.events.types import Event

log = logging.getLogger("geo_offers.events")

STOP_TIMEOUT_S = 10.0


class LocalInbox:
    def __init__(self, engine: Engine, retry_s: float = 1.0) -> None:
        self.engine = engine
        self.retry_s = retry_s
        self._queue: list[Event] = []
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._limiter = anyio.CapacityLimiter(1)

    def add(self, events: Sequence[Event]) -> None:
        """Queue ``events`` (called inside the state step; never blocks)."""
        self._queue.extend(events)
        self._wake.set()

    def __len__(self) -> int:
        return len(self._queue)

    async def flush(self) -> int:
        """Record everything queued now, in one transaction; on failure it stays queued."""
        async with self._limiter:  # one write at a time, in queue order
            batch, self._queue = self._queue, []
            if not batch:
                return 0
            try:
                await anyio.to_thread.run_sync(_record, self.engine, batch)
            except BaseException:
                self._queue[:0] = batch
                raise
        metrics.EVENTS_IMPORTED.inc(len(batch))
        return len(batch)

    def start(self) -> None:
        self._closing = False
        self._task = asyncio.create_task(self._run(), name="local event inbox")

    async def stop(self) -> None:
        """Write what is queued, then stop (at shutdown, before the engine goes)."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._task), STOP_TIMEOUT_S)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._queue:
            metrics.EVENTS_DROPPED.inc(len(self._queue))
            log.error("%d visit events not recorded at shutdown", len(self._queue))

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self.flush()
            except Exception:
                log.warning("visit events not recorded yet; retrying", exc_info=True)
                if self._closing:
                    return
                await asyncio.sleep(self.retry_s)
                self._wake.set()
                continue
            if self._closing:
                if not self._queue:
                    return
                self._wake.set()  # queued during the last write: write them too


def _record(engine: Engine, events: Sequence[Event]) -> None:
    with engine.begin() as conn:
        event_log.record_arrived(conn, events)
