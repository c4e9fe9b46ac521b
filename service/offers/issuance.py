"""Issuance rows written in group commits: concurrent issuances share one transaction, and
each caller is released only once its own rows are committed (or known not to be).

A batch holds the rows of many pings (an offer and its exposure, or a holdout's exposure,
and the event each records: ``offer.issued`` or ``offer.held_out``, in the same
transaction). Batches form while the one ahead commits: at low load a batch is one issuance and
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
import orjson
import psycopg
from sqlalchemy import Engine

from service.batching import Batcher
from service.events import log as event_log
from service.events.types import Event
from service.offers import repository as repo
from service.offers.pool import OfferPool

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
    holdout), the user's first exposure to the campaign, and the events describing them."""

    exposure: Exposure
    offer: dict[str, Any] | None = None
    events: tuple[Event, ...] = ()


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


@dataclass(frozen=True, slots=True)
class RowGroup:
    """Rows of one table in a batch's statement: ``columns`` as (name, PostgreSQL type)."""

    table: str
    columns: tuple[tuple[str, str], ...]
    conflict: str  # the unique columns a repeated row hits (then nothing happens)

    def insert(self) -> str:
        """``INSERT … SELECT FROM jsonb_to_recordset(%s) ON CONFLICT DO NOTHING``: the rows
        are one JSON array (one ``orjson.dumps``), whatever their number."""
        names = ", ".join(name for name, _ in self.columns)
        record = ", ".join(f"{name} {kind}" for name, kind in self.columns)
        return (
            f"INSERT INTO {self.table} ({names}) SELECT {names} "
            f"FROM jsonb_to_recordset(%s::jsonb) AS r({record}) "
            f"ON CONFLICT ({self.conflict}) DO NOTHING"
        )


OFFERS = RowGroup(
    "offers",
    (("offer_id", "text"), ("campaign_id", "text"), ("user_key", "text"), ("device_id", "text"),
     ("store_id", "text"), ("channel", "text"), ("coupon_code", "text"), ("fixed_code", "bool"),
     ("title", "text"), ("message", "text"), ("value", "float8"), ("distance_m", "float8"),
     ("ping_id", "text"), ("issued_at", "timestamptz"), ("expires_at", "timestamptz")),
    "offer_id",
)  # fmt: skip
EXPOSURES = RowGroup(
    "exposures",
    (("campaign_id", "text"), ("user_key", "text"), ("arm", "text"),
     ("first_exposed_at", "timestamptz"), ("store_id", "text")),
    "campaign_id, user_key",
)  # fmt: skip
EVENTS = RowGroup("events", event_log.COLUMN_TYPES, "id")
_OFFERS_PRESENT = "SELECT offer_id FROM offers WHERE offer_id = ANY(%s)"

#: One statement for every batch (data-modifying CTEs): one implicit transaction, one round
#: trip, and one text, prepared once per connection. A group without rows is ``[]``.
BATCH_SQL = f"WITH o AS ({OFFERS.insert()}), x AS ({EXPOSURES.insert()}) {EVENTS.insert()}"


def batch_params(batch: Sequence[Issuance]) -> tuple[str, str, str]:
    """The three JSON arrays of :data:`BATCH_SQL`, each table's rows in key order (so that
    two batches touching the same keys cannot deadlock)."""
    offers = sorted((i.offer for i in batch if i.offer), key=lambda o: o["offer_id"])
    exposures = sorted(
        {(e.campaign_id, e.user_key): e for e in (i.exposure for i in batch)}.values(),
        key=lambda e: (e.campaign_id, e.user_key),
    )
    events = sorted(event_log.event_rows(e for i in batch for e in i.events), key=lambda r: r["id"])
    exposure_rows = [
        {"campaign_id": e.campaign_id, "user_key": e.user_key, "arm": e.arm,
         "first_exposed_at": e.at, "store_id": e.store_id}
        for e in exposures
    ]  # fmt: skip
    return _json(offers), _json(exposure_rows), _json(events)


def _json(rows: list[dict[str, Any]]) -> str:
    """A JSON parameter of :data:`BATCH_SQL`: each row a column → value object (keys that
    are not columns are ignored)."""
    return orjson.dumps(rows).decode()


class PostgresWriter:
    """One statement (one transaction) per batch on a psycopg async pool, its rows in a
    fixed order so that two batches touching the same keys cannot deadlock."""

    def __init__(self, pool: OfferPool) -> None:
        self.pool = pool

    async def write(self, batch: Sequence[Issuance]) -> None:
        params = batch_params(batch)
        try:
            async with self.pool.connection() as conn:
                try:
                    await conn.execute(BATCH_SQL, params, prepare=True)
                except psycopg.OperationalError as exc:
                    # Lost while the statement ran: look before giving caps back.
                    ids = [i.offer["offer_id"] for i in batch if i.offer]
                    raise IssuanceFailed(str(exc), await self._committed(ids)) from exc
        except IssuanceFailed:
            raise
        except Exception as exc:  # no connection, or refused by the database: not written
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
            event_log.record(conn, [e for item in batch for e in item.events])

    async def write(self, batch: Sequence[Issuance]) -> None:
        try:
            await anyio.to_thread.run_sync(self._write, batch)
        except Exception as exc:
            log.warning("issuance batch not written: %r", exc)
            raise IssuanceFailed(repr(exc), False) from exc

    async def close(self) -> None:
        return None
