"""Users who withdrew location consent, checked before a ping touches any state.

The database (``users.attributes.location_consent``) is the truth; this is the fast copy the
ping path reads. It is refilled from the database at start-up, so a Redis that lost its data
cannot silently turn tracking back on.
"""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from service.state.base import StateUnavailable


class MemoryConsent:
    def __init__(self) -> None:
        self._denied: set[str] = set()

    async def denied(self, user_key: str) -> bool:
        return user_key in self._denied

    async def deny(self, user_key: str) -> None:
        self._denied.add(user_key)

    async def allow(self, user_key: str) -> None:
        self._denied.discard(user_key)

    async def load(self, user_keys: list[str]) -> None:
        self._denied.update(user_keys)


class RedisConsent:
    def __init__(self, client: aioredis.Redis, prefix: str) -> None:
        self._r = client
        self._prefix = prefix

    def _key(self, user_key: str) -> str:
        return f"{self._prefix}:{{u:{user_key}}}:no_consent"

    async def denied(self, user_key: str) -> bool:
        try:
            return bool(await self._r.exists(self._key(user_key)))
        except RedisError as exc:
            raise StateUnavailable(str(exc)) from exc

    async def deny(self, user_key: str) -> None:
        await self._r.set(self._key(user_key), b"1")

    async def allow(self, user_key: str) -> None:
        await self._r.delete(self._key(user_key))

    async def load(self, user_keys: list[str]) -> None:
        for key in user_keys:
            await self._r.set(self._key(key), b"1")
