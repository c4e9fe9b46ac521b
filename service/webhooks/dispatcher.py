"""Webhook delivery: one worker per enabled endpoint in every process that relays events.

A worker claims its endpoint's due deliveries from the database (a lease: see
:func:`service.webhooks.repository.claim_due`), sends each as a signed POST with a
whole-request timeout, and stores the outcome. Each worker has its own HTTP client and at
most ``concurrency`` requests in flight, so a slow or dead endpoint holds up only itself:
never another endpoint, and never a ping (pings do not wait for any of this).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
from sqlalchemy import Engine

from service.events import metrics
from service.events.streams import Blocking
from service.webhooks import repository as repo
from service.webhooks.policy import Outcome
from service.webhooks.service import AttemptSettings, EndpointConfig, record_attempts
from service.webhooks.signing import signed_headers

log = logging.getLogger("geo_offers.webhooks")

USER_AGENT = "geo-offers-webhooks/0.1"


class EndpointWorker:
    def __init__(
        self,
        config: EndpointConfig,
        engine: Engine,
        blocking: Blocking,
        attempts: AttemptSettings,
        *,
        concurrency: int,
        timeout_s: float,
        poll_s: float,
    ) -> None:
        self.config = config
        self._engine = engine
        self._blocking = blocking
        self._attempts = attempts
        self._concurrency = concurrency
        self._timeout_s = timeout_s
        self._poll_s = poll_s
        # Past the attempt's timeout and the time to store its outcome: a worker killed
        # mid-attempt leaves the delivery due again after this long.
        self.lease_s = timeout_s + max(5.0, timeout_s)
        self._wake = asyncio.Event()
        self._inflight: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None
        self._stopped = False
        self._outcomes: list[tuple[repo.Claimed, Outcome, asyncio.Future[str]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s),
            follow_redirects=False,  # only a 2xx from the URL itself is a delivery
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
            headers={"user-agent": USER_AGENT},
            trust_env=False,
        )

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"webhook {self.config.id}")

    def wake(self) -> None:
        self._wake.set()

    async def stop(self) -> None:
        """Stop at once; attempts cut short are retried once their lease runs out."""
        self._stopped = True  # a cancellation absorbed by a thread wait still ends the loop
        self._wake.set()
        tasks = [t for t in (self._task, *self._inflight, self._flusher) if t is not None]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5.0)
        await self._client.aclose()

    async def _run(self) -> None:
        while not self._stopped:
            self._wake.clear()  # before claiming: a wake-up from here on is not missed
            free = self._concurrency - len(self._inflight)
            claimed: list[repo.Claimed] = []
            if free > 0:
                try:
                    claimed = await self._blocking(
                        _claim, self._engine, self.config.id, free, self.lease_s
                    )
                except Exception:
                    log.exception("webhook %s: could not claim deliveries", self.config.id)
                for c in claimed:
                    task = asyncio.create_task(self._attempt(self.config, c))
                    self._inflight.add(task)
                    task.add_done_callback(self._done)
            if claimed and len(claimed) == free and len(self._inflight) < self._concurrency:
                continue  # more may be due, and a slot is free already
            # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._poll_s):
                    await self._wake.wait()

    def _done(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        self._wake.set()

    async def _attempt(self, config: EndpointConfig, claimed: repo.Claimed) -> None:
        if claimed.envelope is None:
            outcome = Outcome("retry", None, "the event is no longer in the log")
        else:
            outcome = await self._send(config, claimed.event_id, claimed.envelope)
        done: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._outcomes.append((claimed, outcome, done))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        try:
            result = await done
        except Exception:
            # The lease runs out and the delivery is attempted again: at least once.
            log.exception("webhook %s: outcome of %s not stored", config.id, claimed.event_id)
            return
        if result == "delivered":
            metrics.EVENTS_DELIVERED.labels(config.id).inc()
        elif result == "retried":
            metrics.EVENTS_RETRIED.labels(config.id).inc()
        elif result == "failed":
            metrics.EVENTS_FAILED.labels(config.id).inc()
            log.warning(
                "webhook %s: delivery of %s failed for good: %s",
                config.id, claimed.event_id, outcome.error,
            )  # fmt: skip
        elif result == "dropped":
            metrics.EVENTS_DROPPED.inc()
            log.error("webhook %s: event %s missing from the log", config.id, claimed.event_id)

    async def _flush(self) -> None:
        """Store the outcomes waiting, in one transaction; those that finish meanwhile go
        in the next (one transaction per delivery was the limit: benchmarks/README.md)."""
        while self._outcomes:
            batch, self._outcomes = self._outcomes, []
            try:
                results = await self._blocking(
                    record_attempts, self._engine, self.config.id,
                    [(c, o) for c, o, _ in batch], self._attempts,
                )  # fmt: skip
            except Exception as exc:
                for _, _, done in batch:
                    if not done.done():
                        done.set_exception(exc)
                continue
            for (_, _, done), result in zip(batch, results, strict=True):
                if not done.done():
                    done.set_result(result)

    async def _send(
        self, config: EndpointConfig, event_id: str, envelope: dict[str, Any]
    ) -> Outcome:
        body = orjson.dumps(envelope)
        headers = signed_headers(event_id, int(time.time()), body, config.secrets)
        headers["content-type"] = "application/json"
        policy = self._attempts.policy
        try:
            async with asyncio.timeout(self._timeout_s):
                # The body of the answer is not read: only its status and headers count.
                async with self._client.stream(
                    "POST", config.url, content=body, headers=headers
                ) as resp:
                    return policy.classify(resp.status_code, resp.headers.get("retry-after"))
        except TimeoutError:
            return Outcome("retry", None, f"no answer within {self._timeout_s:g} s")
        except httpx.HTTPError as exc:
            return Outcome("retry", None, f"{type(exc).__name__}: {exc}"[:500])


def _claim(engine: Engine, endpoint_id: str, limit: int, lease_s: float) -> list[repo.Claimed]:
    token = secrets.token_hex(8)
    with engine.begin() as conn:
        return repo.claim_due(conn, endpoint_id, datetime.now(UTC), limit, lease_s, token)
