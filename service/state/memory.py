"""In-process device state for the embedded default (one worker process only).

A step's visit events go to the :class:`~service.events.inbox.LocalInbox` in the step
itself, so a stored step has its events queued for the log and a step not stored has none.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from service.events.inbox import LocalInbox
from service.state.base import ConsentDenied, R, Replayed, Stored, compact


class MemoryStateStore:
    """Dicts with expiry times.

    ``process`` has no ``await`` inside, so on one event loop each call is atomic. Expired
    entries are swept every ``sweep_every`` calls to keep memory bounded.
    """

    def __init__(
        self,
        state_ttl_s: float,
        answer_ttl_s: float,
        sweep_every: int = 10_000,
        inbox: LocalInbox | None = None,
    ) -> None:
        self._inbox = inbox
        self._state: dict[str, tuple[dict[str, Any], float]] = {}
        self._answers: dict[tuple[str, str], tuple[Replayed, float]] = {}
        self._state_ttl = state_ttl_s
        self._answer_ttl = answer_ttl_s
        self._sweep_every = sweep_every
        self._calls = 0
        self._devices: dict[str, set[str]] = {}
        self._denied_users: set[str] = set()
        self._denied_devices: set[str] = set()
        self._denials_loaded = False

    async def process(
        self,
        device_id: str,
        ping_key: str,
        step: Callable[[dict[str, Any] | None], R],
        user_key: str | None = None,
        idle_at: float | None = None,
    ) -> Stored[R] | Replayed | ConsentDenied:
        """See :class:`service.state.base.StateStore`; ``idle_at`` is not needed here (the
        state is in hand)."""
        now = time.monotonic()
        self._calls += 1
        if self._calls % self._sweep_every == 0:
            self._sweep(now)
        if device_id in self._denied_devices:
            return ConsentDenied()
        remembered = self._answers.get((device_id, ping_key))
        if remembered is not None and remembered[1] > now:
            return remembered[0]
        held = self._state.get(device_id)
        current = held[0] if held is not None and held[1] > now else None
        if current is None and user_key is not None:
            if user_key in self._denied_users:
                self._denied_devices.add(device_id)
                return ConsentDenied()
            if user_key != device_id:
                self._devices.setdefault(user_key, set()).add(device_id)
        result = step(current)
        if result.state is not None:
            self._state[device_id] = (result.state, now + self._state_ttl)
        if result.records and self._inbox is not None:
            self._inbox.add(result.records)
        self._remember(device_id, ping_key, result.reason, result.answer, result.pending)
        return Stored(result)

    def _remember(
        self, device_id: str, ping_key: str, reason: str, answer: bytes, pending: bool
    ) -> None:
        replay = Replayed(reason, compact(answer), pending)
        self._answers[(device_id, ping_key)] = (replay, time.monotonic() + self._answer_ttl)

    async def deny(self, user_key: str) -> None:
        self._denied_users.add(user_key)
        for device_id in self._devices.get(user_key, set()) | {user_key}:
            self._denied_devices.add(device_id)
            await self.forget(device_id)

    async def allow(self, user_key: str) -> None:
        self._denied_users.discard(user_key)
        self._denied_devices -= self._devices.get(user_key, set()) | {user_key}

    async def load_denied(self, user_keys: list[str]) -> None:
        for user_key in user_keys:
            await self.deny(user_key)
        self._denials_loaded = True

    async def denials_loaded(self) -> bool:
        return self._denials_loaded

    async def finish(self, device_id: str, ping_key: str, reason: str, answer: bytes) -> None:
        self._remember(device_id, ping_key, reason, answer, False)

    async def answer(self, device_id: str, ping_key: str) -> Replayed | None:
        held = self._answers.get((device_id, ping_key))
        return held[0] if held is not None and held[1] > time.monotonic() else None

    async def devices_of(self, user_key: str) -> set[str]:
        return set(self._devices.get(user_key, set()))

    async def unlink(self, user_key: str) -> None:
        self._devices.pop(user_key, None)

    async def forget(self, device_id: str) -> None:
        """Drop a device's state and its remembered answers (consent withdrawn, erasure)."""
        self._state.pop(device_id, None)
        self._answers = {k: v for k, v in self._answers.items() if k[0] != device_id}

    def _sweep(self, now: float) -> None:
        self._state = {k: v for k, v in self._state.items() if v[1] > now}
        self._answers = {k: v for k, v in self._answers.items() if v[1] > now}

    async def ready(self) -> bool:
        return True

    async def close(self) -> None:
        return None
