"""Sharing counts in Redis: one small Lua script per side, Cluster-safe keys.

Keys (``<p>`` the prefix; ids %-escaped so a hash tag always ends where it should):

- ``<p>:{d:<device>}:trust:users`` — sorted set of user ids, scored by last seen (ms);
- ``<p>:{u:<user>}:trust:devices`` — sorted set of device ids, scored by last seen (ms).

Each script touches one slot, so each side is atomic on a Redis Cluster; the two are sent
together (one round trip of latency), only at the offer moment.
"""

from __future__ import annotations

import asyncio

from redis.exceptions import RedisError

from service.redis_client import Client, redis_client
from service.trust.checks import Sharing, TrustUnavailable
from service.trust.memory import MAX_MEMBERS

# KEYS: the sorted set. ARGV: member, now ms, window ms, members kept. Returns the count.
_SEEN = """
local now, window = tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -tonumber(ARGV[4]) - 1)
redis.call('PEXPIRE', KEYS[1], window)
return redis.call('ZCARD', KEYS[1])
"""


def _esc(part: str) -> str:
    return part.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")


class RedisTrustStore:
    def __init__(self, client: Client, prefix: str) -> None:
        if "{" in prefix or "}" in prefix:
            raise ValueError("prefix must not contain '{' or '}'")
        self._r = client
        self._prefix = prefix
        self._seen = client.register_script(_SEEN)  # EVALSHA with a NOSCRIPT retry

    @classmethod
    def from_url(cls, url: str, prefix: str, *, cluster: bool = False) -> RedisTrustStore:
        return cls(redis_client(url, cluster=cluster), prefix)

    def device_key(self, device_id: str) -> str:
        return f"{self._prefix}:{{d:{_esc(device_id)}}}:trust:users"

    def user_key(self, user_id: str) -> str:
        return f"{self._prefix}:{{u:{_esc(user_id)}}}:trust:devices"

    async def observe(self, device_id: str, user_id: str, now: float, window_s: float) -> Sharing:
        now_ms, window_ms = int(now * 1000), int(window_s * 1000)
        try:
            users, devices = await asyncio.gather(
                self._seen(keys=[self.device_key(device_id)],
                           args=[user_id, now_ms, window_ms, MAX_MEMBERS]),
                self._seen(keys=[self.user_key(user_id)],
                           args=[device_id, now_ms, window_ms, MAX_MEMBERS]),
            )  # fmt: skip
        except RedisError as exc:
            raise TrustUnavailable(str(exc)) from exc
        return Sharing(int(devices), int(users))

    async def forget_user(self, user_id: str, device_ids: list[str]) -> None:
        try:
            await self._r.delete(self.user_key(user_id))
            for device in sorted({user_id, *device_ids}):
                await self._r.delete(self.device_key(device))
        except RedisError as exc:
            raise TrustUnavailable(str(exc)) from exc

    async def close(self) -> None:
        await self._r.aclose()
