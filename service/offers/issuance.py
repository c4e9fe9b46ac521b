"""Issuance rows written in group commits: concurrent issuances share one transaction, and
each caller is released only once its own rows are committed (or known not to be).

A batch holds the rows of many pings (an offer and its exposure, or a holdout's exposure;
:class:`Issuance` is where further rows of the same change, such as an event outbox row,
join). Batches form while the one ahead commits: at low load a batch is one issuance and
waits for nothing; under load each commit carries everything that arrived during the last
one, up to ``max_batch``. A failed batch fails every issuance in it; the caller gives its
caps back when the rows are known not to be committed (:class:`IssuanceFailed`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import anyio.to_thread
import psycopg
from psycopg_pool import AsyncConnectionPool
from sqlalchemy import Engine

from service.batching import Batcher
from service.offers import repository as repo

log = logging.getLogger("geo_offers.offers")


@dataclass(frozen=True, slots=True)
class Exposure:
    campaign_id: str
    user_key: str
    arm: str  # "treatment" | "control"
    at: datetime
    store_id: str


@dataclass(frozen=True, slots=True)
class Issuance:
    """The rows one ping's decision writes, all or none: an offer row (``None`` for a
    holdout) and the user's first exposure to the campaign."""

    exposure: Exposure
    offer: dict[str, Any] | None = None


class IssuanceFailed(Exception):
    """The rows were not written: ``committed`` is False when certainly not, None when the
    outcome is unknown (the connection was lost during COMMIT and could not be checked)."""

    def __init__(self, message: str, committed: bool | None) -> None:
        super().__init__(message)
        self.committed = committed


class BatchWriter(Protocol):
    async def write(self, batch: Sequence[Issuance]) -> None:
        """Write every row of ``batch`` in one transaction; :class:`IssuanceFailed` if not."""
        ...

    async def close(self) -> None: ...


class GroupCommitter:
    """Group commit over a :class:`BatchWriter` (:class:`service.batching.Batcher`)."""

    def __init__(self, writer: BatchWriter, max_batch: int = 256, max_in_flight: int = 2) -> None:
        self.writer = writer
        self._batcher: Batcher[Issuance, None] = Batcher(self._write, max_batch, max_in_flight)

    async def _write(self, batch: Sequence[Issuance]) -> list[None]:
        await self.writer.write(batch)
        return [None] * len(batch)

    async def issue(self, item: Issuance) -> None:
        """Return once ``item``'s rows are committed; raise :class:`IssuanceFailed` if not."""
        try:
            await self._batcher.submit(item)
        except IssuanceFailed:
            raise
        except Exception as exc:
            raise IssuanceFailed(repr(exc), False) from exc

    @property
    def batches(self) -> int:
        return self._batcher.batches

    @property
    def issued(self) -> int:
        return self._batcher.items

    async def close(self) -> None:
        await self._batcher.drain()
        await self.writer.close()


# --- PostgreSQL: psycopg's async API ------------------------------------------------------

_INSERT_OFFER = """
INSERT INTO offers (offer_id, campaign_id, user_key, device_id, store_id, channel,
                    coupon_code, fixed_code, title, message, value, distance_m, ping_id,
                    issued_at, expires_at)
VALUES (%(offer_id)s, %(campaign_id)s, %(user_key)s, %(device_id)s, %(store_id)s,
        %(channel)s, %(coupon_code)s, %(fixed_code)s, %(title)s, %(message)s, %(value)s,
        %(distance_m)s, %(ping_id)s, %(issued_at)s, %(expires_at)s)
ON CONFLICT (offer_id) DO NOTHING
"""
_INSERT_EXPOSURE = """
INSERT INTO exposures (campaign_id, user_key, arm, first_exposed_at, store_id)
VALUES (%s, %s, %s, %s, %s)
ON CONFLICT (campaign_id, user_key) DO NOTHING
"""
_OFFERS_PRESENT = "SELECT offer_id FROM offers WHERE offer_id = ANY(%s)"


class PostgresWriter:
    """One transaction per batch on a psycopg async pool; rows in a fixed order so that two
    batches touching the same keys cannot deadlock."""

    def __init__(self, pool: AsyncConnectionPool[Any]) -> None:
        self.pool = pool

    async def write(self, batch: Sequence[Issuance]) -> None:
        offers = sorted((i.offer for i in batch if i.offer), key=lambda o: o["offer_id"])
        exposures = sorted(
            {(e.campaign_id, e.user_key): e for e in (i.exposure for i in batch)}.values(),
            key=lambda e: (e.campaign_id, e.user_key),
        )
        try:
            async with self.pool.connection() as conn:
                try:
                    # One round trip: BEGIN, the inserts and COMMIT leave together.
                    async with conn.pipeline(), conn.transaction(), conn.cursor() as cur:
                        if offers:
                            await cur.executemany(_INSERT_OFFER, offers)
                        await cur.executemany(
                            _INSERT_EXPOSURE,
                            [
                                (e.campaign_id, e.user_key, e.arm, e.at, e.store_id)
                                for e in exposures
                            ],
                        )
                except psycopg.OperationalError as exc:
                    # Lost while writing or committing: look before giving caps back.
                    ids = [o["offer_id"] for o in offers]
                    raise IssuanceFailed(str(exc), await self._committed(ids)) from exc
        except IssuanceFailed:
            raise
        except Exception as exc:  # no connection, or an error before COMMIT: rolled back
            raise IssuanceFailed(repr(exc), False) from exc

    async def _committed(self, offer_ids: list[str]) -> bool | None:
        if not offer_ids:
            return None
        try:
            async with self.pool.connection(timeout=2.0) as conn:
                cur = await conn.execute(_OFFERS_PRESENT, (offer_ids,))
                present = {r[0] for r in await cur.fetchall()}
        except Exception:
            return None
        if present == set(offer_ids):
            return True
        return False if not present else None

    async def close(self) -> None:
        return None  # the pool belongs to the app


# --- SQLite (the embedded default): SQLAlchemy in a thread --------------------------------


class ThreadWriter:
    """One transaction per batch through SQLAlchemy, in a worker thread."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def _write(self, batch: Sequence[Issuance]) -> None:
        with self.engine.begin() as conn:
            for item in batch:
                if item.offer is not None:
                    repo.insert_offer(conn, item.offer)
                e = item.exposure
                repo.record_exposure(conn, e.campaign_id, e.user_key, e.arm, e.at, e.store_id)

    async def write(self, batch: Sequence[Issuance]) -> None:
        try:
            await anyio.to_thread.run_sync(self._write, batch)
        except Exception as exc:
            log.warning("issuance batch not written: %r", exc)
            raise IssuanceFailed(repr(exc), False) from exc

    async def close(self) -> None:
        return None
