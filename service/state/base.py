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


class StateUnavailable(Exception):
    """The state backend cannot be reached; pings answer without events instead of 5xx."""


class StateStore(Protocol):
    async def process(self, device_id: str, ping_key: str, step: Step) -> bytes: ...

    async def finish(self, device_id: str, ping_key: str, body: bytes) -> None:
        """Replace a ping's provisional answer by its final one (after the offer decision)."""
        ...

    async def answer(self, device_id: str, ping_key: str) -> bytes | None: ...

    async def forget(self, device_id: str) -> None: ...

    async def link_user(self, user_key: str, device_id: str) -> None:
        """Remember that ``device_id`` pings for ``user_key`` (so erasure can find it)."""
        ...

    async def devices_of(self, user_key: str) -> set[str]: ...

    async def ready(self) -> bool: ...

    async def close(self) -> None: ...
