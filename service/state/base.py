"""The device-state interface the ping path uses.

``process`` is one atomic, idempotent step for one device: if the ping was answered before,
its first answer comes back (:class:`Replayed`) and nothing changes; otherwise ``step`` sees
the current state and returns a :class:`StepResult` (the new state and the answer), and both
are stored together (:class:`Stored`) — or, when another replica changed the device in
between, ``step`` runs again on the fresh state.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from service.events.types import Event


class StepResult(Protocol):
    """What a step makes of a ping: the state to store and the answer to remember."""

    @property
    def state(self) -> dict[str, Any] | None:
        """The new state document, or None to keep the current one."""
        ...

    @property
    def reason(self) -> str: ...

    @property
    def answer(self) -> bytes: ...

    @property
    def pending(self) -> bool:
        """The answer is provisional: an offer decision follows (:meth:`StateStore.finish`)."""
        ...

    @property
    def records(self) -> Sequence[Event]:
        """Events the step describes (visits): stored with the new state, atomically — in
        the same Redis script, or the same in-process step — or not at all."""
        ...


R = TypeVar("R", bound=StepResult)


@dataclass(frozen=True, slots=True)
class Stored(Generic[R]):
    """This call stepped the device: ``result`` (of the attempt that was stored) is in."""

    result: R


@dataclass(frozen=True, slots=True)
class Replayed:
    """The ping was answered before: its remembered answer, provisional when ``pending``."""

    reason: str
    answer: bytes
    pending: bool


@dataclass(frozen=True, slots=True)
class ConsentDenied:
    """The user withdrew location consent: nothing was stored for this device."""


Outcome = Stored[R] | Replayed | ConsentDenied


def compact(raw: bytes) -> bytes:
    """A copy of ``raw`` that takes only its own length in memory.

    orjson's output is a bytes object whose allocation stays at orjson's 4 KB starting
    buffer (``sys.getsizeof`` does not show it; tracemalloc does: 4,098 bytes per 61-byte
    state document). Anything kept for long (cached states, remembered answers) is stored
    through this, or 200 k cached device states take 800 MB instead of 30.
    """
    return bytes(memoryview(raw))


_PENDING, _FINAL = b"~", b"="


def encode_answer(reason: str, answer: bytes, pending: bool) -> bytes:
    """A remembered answer as stored: a pending/final mark, the reason, a space, the body.

    >>> decode_answer(encode_answer("no_trigger", b"{}", False))
    Replayed(reason='no_trigger', answer=b'{}', pending=False)
    """
    return b"".join((_PENDING if pending else _FINAL, reason.encode(), b" ", answer))


def decode_answer(raw: bytes) -> Replayed:
    head, _, answer = raw.partition(b" ")
    return Replayed(head[1:].decode(), answer, head[:1] == _PENDING)


class StateUnavailable(Exception):
    """The state backend cannot be reached; pings answer without events instead of 5xx."""


class StateStore(Protocol):
    async def process(
        self,
        device_id: str,
        ping_key: str,
        step: Callable[[dict[str, Any] | None], R],
        user_key: str | None = None,
        idle_at: float | None = None,
    ) -> Stored[R] | Replayed | ConsentDenied:
        """Step the device for this ping, or replay the ping's first answer.

        ``user_key`` (user_id, else device_id) is checked for consent when the device has no
        state yet, and the device is linked to it, so that a later consent change or erasure
        of the user reaches the device.

        ``idle_at``: the caller's promise that ``step`` gives the same result for every
        *idle* state — one that lists no visit (``"in"`` empty) and whose last ping (``"t"``)
        is not after ``idle_at`` — as for no state at all, but for the device's last accepted
        fix; true of a ping that matches no fence or is too inaccurate to match. A store may
        then run ``step(None)`` and store its result once it has seen that the current state
        is idle, without reading the state first, judging the fix itself
        (:func:`service.trust.judge_fix`: the current one stays unless the ping's is there
        and plausible from it); the answer is the same with or without it. State documents
        are ``{"t": <epoch s>, "in": {...}}`` (:meth:`geofences.visits.DeviceState.to_doc`)
        and, once the device has an accepted fix, ``"f": [lat, lng, ts, accuracy_m]``.
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

    async def finish(self, device_id: str, ping_key: str, reason: str, answer: bytes) -> None:
        """Replace a ping's provisional answer by its final one (after the offer decision)."""
        ...

    async def answer(self, device_id: str, ping_key: str) -> Replayed | None: ...

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
