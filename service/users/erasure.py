"""Erasure of a user's personal data: all of it, or what the database holds at once and the
rest (device state, cap history and trust counts in Redis) by itself as soon as Redis answers
again.

The database is the durable record: the rows are erased and the erasure is recorded
``pending`` in one transaction, before any Redis step. Every Redis step is idempotent and
the device links are dropped last, so an erasure interrupted anywhere (Redis down, the
process killed) is simply run again, by this replica or any other: each replica's
:meth:`Eraser.resume` claims pending erasures under a lease (``FOR UPDATE SKIP LOCKED``
on PostgreSQL) and finishes them.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import anyio.to_thread
from sqlalchemy import Engine

from service.caps.base import CapStore, CapUnavailable
from service.events import log as event_log
from service.state.base import StateStore, StateUnavailable
from service.trust.checks import TrustStore, TrustUnavailable
from service.users import repository as repo

log = logging.getLogger("geo_offers.erasure")

#: The steps that may fail while Redis is down; anything else is a bug.
UNAVAILABLE = (StateUnavailable, CapUnavailable, TrustUnavailable)


@dataclass(frozen=True)
class ErasureOutcome:
    """``done``; ``pending`` (the rest follows by itself); ``not_found`` (nothing held)."""

    status: Literal["done", "pending", "not_found"]
    counts: dict[str, int] = field(default_factory=dict)


class Eraser:
    """Erases users across the database and the device-state and cap stores."""

    def __init__(
        self,
        engine: Engine,
        state: StateStore,
        caps: CapStore,
        trust: TrustStore,
        lease_s: float = 60.0,
    ) -> None:
        self.engine = engine
        self.state = state
        self.caps = caps
        self.trust = trust
        self.lease_s = lease_s

    async def erase(self, user_id: str) -> ErasureOutcome:
        """Erase ``user_id``: the database part or nothing (it raises when the database is
        down), then the Redis part now or later."""
        counts, devices, before = await anyio.to_thread.run_sync(self._begin, user_id)
        key = repo.user_hash(user_id)
        try:
            linked = await self._redis_steps(user_id, devices)
        except UNAVAILABLE as exc:
            log.warning("erasure pending: %s", type(exc).__name__)
            await self._quietly(repo.release_erasure, key, f"{type(exc).__name__}: {exc}")
            return ErasureOutcome("pending", counts)
        was_pending = before is not None and before["status"] == "pending"
        if not any(counts.values()) and not linked and not was_pending:
            await anyio.to_thread.run_sync(self._in_tx, repo.restore_erasure, key, before)
            return ErasureOutcome("not_found", counts)
        try:
            await anyio.to_thread.run_sync(self._finish, user_id, key, linked)
        except Exception:  # the database went away: the record stays pending, resume ends it
            log.warning("erasure done but not recorded; it will be rerun", exc_info=True)
            return ErasureOutcome("pending", counts)
        return ErasureOutcome("done", counts)

    async def resume(self) -> int:
        """Finish the pending erasures nobody holds; the number finished. Stops at the first
        one whose Redis step fails (Redis is down: the next call tries again)."""
        finished = 0
        while True:
            claimed = await anyio.to_thread.run_sync(self._claim)
            if claimed is None:
                return finished
            key, user_id, devices = claimed
            try:
                linked = await self._redis_steps(user_id, devices)
            except UNAVAILABLE as exc:
                await self._quietly(repo.release_erasure, key, f"{type(exc).__name__}: {exc}")
                return finished
            await anyio.to_thread.run_sync(self._finish, user_id, key, linked)
            finished += 1
            log.info("pending erasure finished")

    def pending(self) -> int:
        with self.engine.connect() as conn:
            return repo.pending_erasures(conn)

    def status(self, user_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            return repo.erasure_of(conn, user_id)

    # -- steps --------------------------------------------------------------------------

    def _begin(self, user_id: str) -> tuple[dict[str, int], list[str], dict[str, Any] | None]:
        now = _now()
        with self.engine.begin() as conn:
            devices = repo.devices_of(conn, user_id)  # before the offers lose them
            counts = repo.erase(conn, user_id, f"erased-{uuid.uuid4().hex}")
            lease = now + timedelta(seconds=self.lease_s)
            before = repo.record_erasure(conn, user_id, devices, now, lease)
            was_pending = before is not None and before["status"] == "pending"
            if any(counts.values()) or devices or was_pending:
                self._record_event(conn, user_id, repo.user_hash(user_id), devices, now)
        return counts, devices, before

    def _finish(self, user_id: str, key: str, linked: set[str]) -> None:
        """The erasure done; ``user.erased`` recorded now if only Redis held the user (the
        devices ``linked``; recorded by :meth:`_begin` otherwise: the same id, once)."""
        now = _now()
        with self.engine.begin() as conn:
            if linked:
                self._record_event(conn, user_id, key, sorted(linked), now)
            repo.finish_erasure(conn, key, now)

    @staticmethod
    def _record_event(conn: Any, user_id: str, key: str, devices: list[str], now: datetime) -> None:
        """``user.erased`` (and the user's earlier events redacted) in ``conn``'s
        transaction, under the erasure request's id."""
        event_log.record_user_erased(
            conn, user_id=user_id, erasure_id=repo.erasure_id(conn, key), device_ids=devices,
            at=now,
        )  # fmt: skip

    async def _redis_steps(self, user_id: str, devices: list[str]) -> set[str]:
        """Every step idempotent; the links go last, so a rerun still finds the devices."""
        linked = await self.state.devices_of(user_id)
        for device_id in sorted({*devices, *linked, user_id}):
            await self.state.forget(device_id)
        await self.caps.forget_user(user_id)
        await self.trust.forget_user(user_id, sorted({*devices, *linked}))
        await self.state.allow(user_id)  # consent flags: an erased user has no attributes
        await self.state.unlink(user_id)
        return linked

    def _claim(self) -> tuple[str, str, list[str]] | None:
        now = _now()
        with self.engine.begin() as conn:
            return repo.claim_erasure(conn, now, now + timedelta(seconds=self.lease_s))

    def _in_tx(self, step: Any, *args: Any) -> None:
        with self.engine.begin() as conn:
            step(conn, *args)

    async def _quietly(self, step: Any, *args: Any) -> None:
        try:
            await anyio.to_thread.run_sync(self._in_tx, step, *args)
        except Exception:  # the lease runs out instead
            log.warning("could not release a pending erasure", exc_info=True)


def _now() -> datetime:
    return datetime.now(UTC)
