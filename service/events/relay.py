"""The background work that takes events out of the log, started in every process's lifespan.

- fan-out: new events → webhook deliveries (one row per matching enabled endpoint);
- one :class:`~service.webhooks.dispatcher.EndpointWorker` per enabled endpoint;
- with Redis: new events → the public streams, and the inbox streams → the log;
- housekeeping: the backlog gauges, and deleting handled events after the retention.

Every step's state is in the database (or a Redis consumer group), so any replica may run
it and a process killed at any point loses nothing: what it had claimed becomes due again.
Database work runs in threads under a small limiter of its own, so it never takes the
threads the request handlers use.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import anyio.to_thread
from sqlalchemy import Engine

from service.events import metrics
from service.events.log import prune
from service.events.streams import EventStreams, StreamLayout, client_from_url
from service.settings import Settings
from service.webhooks import repository as webhooks_repo
from service.webhooks.dispatcher import EndpointWorker
from service.webhooks.policy import RetryPolicy
from service.webhooks.service import AttemptSettings, endpoint_configs

log = logging.getLogger("geo_offers.events")

BATCH = 500
GAUGE_PERIOD_S = 5.0
PRUNE_PERIOD_S = 600.0
#: The inbox is polled again this soon after a pass that found entries: many small imports
#: rather than one a second (a second's events in one pass held Redis and the GIL long
#: enough to show in the pings' tail).
BUSY_POLL_S = 0.05
RECLAIM_EVERY = 10  # inbox polls between two reclaims of entries a dead consumer left
STOP_TIMEOUT_S = 10.0  # a job's database call in progress finishes within its own timeouts


def consumer_name() -> str:
    """This process's name in the inbox consumer group."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


def attempt_settings(settings: Settings) -> AttemptSettings:
    return AttemptSettings(
        RetryPolicy(
            base_s=settings.webhook_backoff_base_s,
            max_s=settings.webhook_backoff_max_s,
            retry_for_s=settings.webhook_retry_for_s,
            retry_after_max_s=settings.webhook_retry_after_max_s,
        ),
        settings.webhook_disable_after_s,
    )


def make_event_relay(settings: Settings, engine: Engine) -> EventRelay | None:
    """Webhook delivery and the stream relays of this process (DESIGN §10), unless turned
    off; the streams only with Redis."""
    if not settings.event_relay:
        return None
    streams = None
    if settings.redis_url:
        layout = StreamLayout(settings.redis_prefix, settings.stream_partitions)
        client = client_from_url(settings.redis_url, settings.redis_cluster)
        streams = EventStreams(client, layout, settings.stream_maxlen, consumer_name())
    return EventRelay(engine, settings, streams)


class EventRelay:
    def __init__(self, engine: Engine, settings: Settings, streams: EventStreams | None) -> None:
        self.engine = engine
        self.settings = settings
        self.streams = streams
        self.workers: dict[str, EndpointWorker] = {}
        self._attempts = attempt_settings(settings)
        self._limiter = anyio.CapacityLimiter(4)
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        self._imports = 0

    async def blocking(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await anyio.to_thread.run_sync(fn, *args, limiter=self._limiter)

    async def start(self) -> None:
        poll = self.settings.events_poll_s
        jobs: list[tuple[str, float, Callable[[], Awaitable[Any]], float | None]] = [
            ("fan-out", poll, self.fan_out, None),
            ("webhook endpoints", poll, self.sync_workers, None),
            ("backlog gauges", GAUGE_PERIOD_S, self.refresh_gauges, None),
            ("retention", PRUNE_PERIOD_S, self.prune, None),
        ]
        if self.streams is not None:
            jobs += [
                ("stream relay", poll, self.relay_streams, None),
                ("inbox", poll, self.import_inbox, min(poll, BUSY_POLL_S)),
            ]
        self._stopping.clear()
        self._tasks = [
            asyncio.create_task(_every(name, period, job, self._stopping, busy), name=name)
            for name, period, job, busy in jobs
        ]

    async def stop(self) -> None:
        # The flag as well as the cancel: a cancellation that lands while a job waits for
        # its thread is absorbed by anyio's shielded wait, and the loop must end anyway.
        self._stopping.set()
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=STOP_TIMEOUT_S)
        self._tasks = []
        for worker in list(self.workers.values()):
            await worker.stop()
        self.workers.clear()
        if self.streams is not None:
            await self.streams.close()

    async def fan_out(self) -> int:
        """Turn every event not fanned out yet into deliveries; wake the workers concerned."""
        total = 0
        while True:
            types, made = await self.blocking(_fan_out, self.engine, BATCH)
            for t in types:
                metrics.EVENTS_RECORDED.labels(t).inc()
            self._wake(made)
            total += len(types)
            if len(types) < BATCH:
                return total

    async def sync_workers(self) -> None:
        """One worker per enabled endpoint, with its current URL and secrets."""
        configs = {c.id: c for c in await self.blocking(endpoint_configs, self.engine)}
        for endpoint_id in list(self.workers):
            if endpoint_id not in configs:
                await self.workers.pop(endpoint_id).stop()
        s = self.settings
        for endpoint_id, config in configs.items():
            worker = self.workers.get(endpoint_id)
            if worker is None:
                worker = EndpointWorker(
                    config, self.engine, self.blocking, self._attempts,
                    concurrency=s.webhook_concurrency, timeout_s=s.webhook_timeout_s,
                    poll_s=s.events_poll_s,
                )  # fmt: skip
                self.workers[endpoint_id] = worker
                worker.start()
            else:
                worker.config = config

    async def relay_streams(self) -> int:
        assert self.streams is not None
        total = 0
        while True:
            n = await self.streams.relay(self.engine, self.blocking, BATCH)
            total += n
            if n < BATCH:
                return total

    async def import_inbox(self) -> int:
        assert self.streams is not None
        self._imports += 1
        reclaim = self._imports % RECLAIM_EVERY == 1
        return int(
            await self.streams.import_inbox(
                self.engine, self.blocking, BATCH, reclaim, wake=self._wake
            )
        )

    def _wake(self, made: Mapping[str, int]) -> None:
        for endpoint_id in made:
            worker = self.workers.get(endpoint_id)
            if worker is not None:
                worker.wake()

    async def refresh_gauges(self) -> None:
        backlog, fanout, stream = await self.blocking(_backlog, self.engine)
        now = datetime.now(UTC)
        metrics.set_backlog({ep: backlog.get(ep) for ep in self.workers}, now)
        metrics.set_unrelayed("webhooks", fanout, now)
        if self.streams is not None:
            metrics.set_unrelayed("streams", stream, now)

    async def prune(self) -> int:
        before = datetime.now(UTC) - timedelta(seconds=self.settings.event_retention_s)
        total = 0
        while True:
            n: int = await self.blocking(_prune, self.engine, before, self.streams is not None)
            total += n
            if n < BATCH:
                return total


async def _every(
    name: str,
    period_s: float,
    job: Callable[[], Awaitable[Any]],
    stopping: asyncio.Event,
    busy_s: float | None = None,
) -> None:
    """Run ``job`` every ``period_s`` until ``stopping`` is set; a failure is logged (once a
    minute while it lasts) and the job tried again next period. With ``busy_s``, a run that
    did some work (returned a count above 0) is followed by the next after ``busy_s``."""
    last_logged = 0.0
    while not stopping.is_set():
        wait_s = period_s
        try:
            did = await job()
            if busy_s is not None and did:
                wait_s = busy_s
        except asyncio.CancelledError:
            raise
        except Exception:
            now = time.monotonic()
            if now - last_logged > 60:
                log.warning("%s failed; retrying every %.1f s", name, period_s, exc_info=True)
                last_logged = now
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait_s):
                await stopping.wait()


def _fan_out(engine: Engine, limit: int) -> tuple[list[str], dict[str, int]]:
    with engine.begin() as conn:
        return webhooks_repo.fan_out(conn, datetime.now(UTC), limit)


def _backlog(
    engine: Engine,
) -> tuple[dict[str, datetime], datetime | None, datetime | None]:
    with engine.connect() as conn:
        pending = {ep: oldest for ep, (_, oldest) in webhooks_repo.backlog(conn).items()}
        return (
            pending,
            webhooks_repo.oldest_unhandled(conn, "fanned_out"),
            webhooks_repo.oldest_unhandled(conn, "streamed"),
        )


def _prune(engine: Engine, before: datetime, streams: bool) -> int:
    with engine.begin() as conn:
        return prune(conn, before, streams=streams, limit=BATCH)
