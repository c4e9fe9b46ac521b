"""The offer path's PostgreSQL pool (psycopg's async API), opened on first use: a replica
that never decides an offer holds no connection for it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool


class OfferPool:
    def __init__(self, pool: AsyncConnectionPool[Any]) -> None:
        self.pool = pool
        self._opened = False
        self._lock = asyncio.Lock()

    async def _open(self) -> None:
        async with self._lock:
            if not self._opened:
                # Not waiting for the first connection: a database that is down only makes
                # this request fail closed (the pool's timeout), and the pool retries.
                await self.pool.open(wait=False)
                self._opened = True

    @contextlib.asynccontextmanager
    async def connection(self, timeout: float | None = None) -> AsyncIterator[AsyncConnection[Any]]:
        if not self._opened:
            await self._open()
        async with self.pool.connection(timeout=timeout) as conn:
            yield conn

    async def close(self) -> None:
        if self._opened:
            await self.pool.close()
