"""Micro-batching: concurrent requests for the same kind of I/O share one round trip.

A batch starts as soon as a slot is free (``max_in_flight`` batches run at once); requests
that arrive meanwhile wait and leave together in the next one, up to ``max_batch``. At low
load a batch is one request and waits for nothing; under load each carries whatever
arrived during the one ahead. Every caller gets its own result, or the batch's exception.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
V = TypeVar("V")


class Batcher(Generic[T, V]):
    def __init__(
        self,
        run: Callable[[Sequence[T]], Awaitable[Sequence[V]]],
        max_batch: int,
        max_in_flight: int,
    ) -> None:
        """``run(items)`` does the I/O for a batch and returns one result per item."""
        self._run = run
        self.max_batch = max_batch
        self._queue: list[tuple[T, asyncio.Future[V]]] = []
        self._slots = max_in_flight
        self._tasks: set[asyncio.Task[None]] = set()
        self.batches = 0  # completed, for benchmarks and tests
        self.items = 0

    async def submit(self, item: T) -> V:
        fut: asyncio.Future[V] = asyncio.get_running_loop().create_future()
        self._queue.append((item, fut))
        self._start()
        # Shielded: a cancelled caller must not cancel the batch the others wait on.
        return await asyncio.shield(fut)

    def _start(self) -> None:
        while self._queue and self._slots > 0:
            batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch :]
            self._slots -= 1
            task = asyncio.get_running_loop().create_task(self._batch(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _batch(self, batch: list[tuple[T, asyncio.Future[V]]]) -> None:
        try:
            results = await self._run([item for item, _ in batch])
        except Exception as exc:
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
        else:
            self.batches += 1
            self.items += len(batch)
            for (_, fut), result in zip(batch, results, strict=True):
                if not fut.done():
                    fut.set_result(result)
        finally:
            self._slots += 1
            self._start()

    async def drain(self) -> None:
        """Wait for the batches under way (at shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
