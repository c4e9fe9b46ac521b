"""The device-state interface the ping path uses.

``process`` is one atomic, idempotent step for one device: if the ping was answered before,
its first answer comes back and nothing changes; otherwise ``step`` sees the current state,
returns the new state and the answer, and both are stored together — or, when another
replica changed the device in between, ``step`` runs again on the fresh state.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

#: step(current state or None) -> (new state, or None to keep the current one; answer bytes)
Step = Callable[[dict[str, Any] | None], tuple[dict[str, Any] | None, bytes]]


def compact(raw: bytes) -> bytes:
    """A copy of ``raw`` that takes only its own length in memory.

    orjson's output is a bytes object whose allocation stays at orjson's 4 KB starting
    buffer (``sys.getsizeof`` does not show it; tracemalloc does: 4,098 bytes per 61-byte
    state document). Anything kept for long (cached states, remembered answers) is stored
    through this, or 200 k cached device states take 800 MB instead of 30.
    """
    return bytes(memoryview(raw))


class StateUnavailable(Exception):
    """The state backend cannot be reached; pings answer without events instead of 5xx."""


class StateStore(Protocol):
    async def process(
        self,
        device_id: str,
        ping_key: str,
        step: Step,
        user_key: str | None = None,
        idle_at: float | None = None,
    ) -> bytes | None:
        """The answer; None when the user withdrew location consent (nothing was stored).

        ``user_key`` (user_id, else device_id) is checked for consent when the device has no
        state yet, and the device is linked to it, so that a later consent change or erasure
        of the user reaches the device.

        ``idle_at``: the caller's promise that ``step`` gives the same result for every
        *idle* state — one that lists no visit (``"in"`` empty) and whose last ping (``"t"``)
        is not after ``idle_at`` — as for no state at all; true of a ping that matches no
        fence or is too inaccurate to match. A store may then run ``step(None)`` and store
        its result once it has seen that the current state is idle, without reading the
        state first; the answer is the same with or without it. State documents are
        ``{"t": <epoch s>, "in": {...}}`` (:meth:`geofences.visits.DeviceState.to_doc`).
        """
        ...

    async def deny(self, user_key: str) -> None:
        """Consent withdrawn: the user's devices are not processed from their next ping."""
        ...

    async def allow(self, user_key: str) -> None: ...

    async def load_denied(self, user_keys: list[str]) -> None:
        """Deny every user in ``user_keys`` (the database's list), then remember it was done."""
        ...

    async def denials_loaded(self) -> bool:
        """False until :meth:`load_denied` ran against this store's current data: at start,
        and again after Redis came back empty (a restart without persistence)."""
        ...

    async def finish(self, device_id: str, ping_key: str, body: bytes) -> None:
        """Replace a ping's provisional answer by its final one (after the offer decision)."""
        ...

    async def answer(self, device_id: str, ping_key: str) -> bytes | None: ...

    async def forget(self, device_id: str) -> None: ...

    async def devices_of(self, user_key: str) -> set[str]:
        """The devices linked to ``user_key`` (for erasure)."""
        ...

    async def unlink(self, user_key: str) -> None:
        """Forget which devices ``user_key`` used (the last step of an erasure, so that a
        retried erasure still finds them)."""
        ...

    async def ready(self) -> bool: ...

    async def close(self) -> None: ...
