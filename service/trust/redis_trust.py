"""Trust state in Redis: two small Lua scripts, Cluster-safe keys, one pipelined round trip.

Keys (``<p>`` the prefix; ids %-escaped so a hash tag always ends where it should):

- ``<p>:{d:<device>}:trust:fix`` — hash ``lat lng ts acc``: the last accepted fix, expiring
  when any jump from it would be possible at ``max_speed_kmh`` (~22 h at 900 km/h);
- ``<p>:{d:<device>}:trust:users`` — sorted set of user ids, scored by last seen (ms);
- ``<p>:{u:<user>}:trust:devices`` — sorted set of device ids, scored by last seen (ms).

The device script (travel and users-of-device) touches only the device's slot, the user
script only the user's, so each is atomic on a Redis Cluster; a ping with a user id sends
both in one pipeline — one round trip, or alongside the ping's own state script.
:meth:`RedisTrustStore.calls` hands the commands out for a caller that pipelines them
itself; :meth:`RedisTrustStore.observe` sends them.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError

from service.trust.checks import MAX_ACCURACY_ALLOWANCE_M, Fix, Observation, TrustLimits, TrustPing
from service.trust.memory import MAX_MEMBERS

# KEYS: fix hash, users set. ARGV: lat, lng, ts, accuracy, mocked ('1'/'0'), max speed m/s,
# fix ttl ms, user id ('' = none), now ms, window ms, members kept, earth radius m,
# accuracy allowance cap m.
# Returns {travel ok 1/0, speed m/s as text ('' = no previous fix, 'inf'), users of device,
# previous lat, lng, ts, acc as text (or '')}.
_DEVICE = """
local lat, lng, ts, acc = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local cap = tonumber(ARGV[13])
local prev = redis.call('HMGET', KEYS[1], 'lat', 'lng', 'ts', 'acc')
local ok, speed = 1, ''
if prev[1] then
  local plat, plng = tonumber(prev[1]), tonumber(prev[2])
  local pts, pacc = tonumber(prev[3]), tonumber(prev[4])
  local r = math.pi / 180
  local dlat, dlng = (lat - plat) * r, (lng - plng) * r
  local h = math.sin(dlat / 2) ^ 2 + math.cos(plat * r) * math.cos(lat * r) * math.sin(dlng / 2) ^ 2
  if h > 1 then h = 1 end
  local moved = 2 * tonumber(ARGV[12]) * math.asin(math.sqrt(h))
    - math.min(acc, cap) - math.min(pacc, cap)
  local dt = math.abs(ts - pts)
  if moved <= 0 then speed = '0'
  elseif dt == 0 then speed = 'inf'; ok = 0
  else
    local v = moved / dt
    speed = string.format('%.17g', v)
    if v > tonumber(ARGV[6]) then ok = 0 end
  end
else
  prev = {'', '', '', ''}
end
if ok == 1 and ARGV[5] == '0' and (prev[3] == '' or ts >= tonumber(prev[3])) then
  redis.call('HSET', KEYS[1], 'lat', ARGV[1], 'lng', ARGV[2], 'ts', ARGV[3], 'acc', ARGV[4])
  redis.call('PEXPIRE', KEYS[1], ARGV[7])
end
local users = 0
if ARGV[8] ~= '' then
  local now, window = tonumber(ARGV[9]), tonumber(ARGV[10])
  redis.call('ZADD', KEYS[2], now, ARGV[8])
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - window)
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -tonumber(ARGV[11]) - 1)
  redis.call('PEXPIRE', KEYS[2], window)
  users = redis.call('ZCARD', KEYS[2])
end
return {ok, speed, users, prev[1] or '', prev[2] or '', prev[3] or '', prev[4] or ''}
"""

# KEYS: devices set. ARGV: device id, now ms, window ms, members kept. Returns the count.
_USER = """
local now, window = tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -tonumber(ARGV[4]) - 1)
redis.call('PEXPIRE', KEYS[1], window)
return redis.call('ZCARD', KEYS[1])
"""

Client = aioredis.Redis | RedisCluster
#: Runs one script: (sha1, script, keys, args) -> reply. The ping path may pass its own
#: (pipelined) client's EVALSHA here.
ScriptRunner = Callable[[str, bytes, Sequence[Any], Sequence[Any]], Awaitable[Any]]


def _esc(part: str) -> str:
    return part.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(frozen=True, slots=True)
class ScriptCall:
    sha: str
    script: bytes
    keys: tuple[str, ...]
    args: tuple[Any, ...]


_DEVICE_CALL = (_DEVICE.encode(), hashlib.sha1(_DEVICE.encode()).hexdigest())
_USER_CALL = (_USER.encode(), hashlib.sha1(_USER.encode()).hexdigest())


class RedisTrustStore:
    def __init__(self, client: Client, prefix: str, runner: ScriptRunner | None = None) -> None:
        if "{" in prefix or "}" in prefix:
            raise ValueError("prefix must not contain '{' or '}'")
        self._r = client
        self._prefix = prefix
        self._run = runner or self._evalsha

    @classmethod
    def from_url(cls, url: str, prefix: str, *, cluster: bool = False) -> RedisTrustStore:
        opts: dict[str, Any] = {"socket_timeout": 2.0, "socket_connect_timeout": 2.0}
        client: Client
        if cluster:
            client = RedisCluster.from_url(url, **opts)
        else:
            client = aioredis.Redis.from_url(url, health_check_interval=10, **opts)
        return cls(client, prefix)

    def device_keys(self, device_id: str) -> tuple[str, str]:
        tag = f"{self._prefix}:{{d:{_esc(device_id)}}}"
        return f"{tag}:trust:fix", f"{tag}:trust:users"

    def user_key(self, user_id: str) -> str:
        return f"{self._prefix}:{{u:{_esc(user_id)}}}:trust:devices"

    def calls(self, ping: TrustPing, limits: TrustLimits) -> list[ScriptCall]:
        """The scripts that record ``ping`` (the device's, then the user's when it has a
        user id), for a caller that pipelines them; :meth:`observation` reads the replies."""
        f = ping.fix
        now_ms = int(ping.now * 1000)
        window_ms = int(limits.window_s * 1000)
        device = ScriptCall(
            _DEVICE_CALL[1],
            _DEVICE_CALL[0],
            self.device_keys(ping.device_id),
            (
                repr(f.lat), repr(f.lng), repr(f.ts), repr(f.accuracy_m),
                "1" if ping.mocked else "0", repr(limits.max_speed_kmh / 3.6),
                int(limits.fix_ttl_s * 1000), ping.user_id or "", now_ms, window_ms,
                MAX_MEMBERS, repr(6_371_008.7714), repr(MAX_ACCURACY_ALLOWANCE_M),
            ),
        )  # fmt: skip
        if ping.user_id is None:
            return [device]
        user = ScriptCall(
            _USER_CALL[1],
            _USER_CALL[0],
            (self.user_key(ping.user_id),),
            (ping.device_id, now_ms, window_ms, MAX_MEMBERS),
        )
        return [device, user]

    @staticmethod
    def observation(replies: Sequence[Any]) -> Observation:
        dev = replies[0]
        speed_text = _text(dev[1])
        speed = None if speed_text == "" else float(speed_text) * 3.6
        prev = None
        if _text(dev[3]):
            lat, lng, ts, acc = (float(_text(v)) for v in dev[3:7])
            prev = Fix(lat, lng, ts, acc)
        devices = int(replies[1]) if len(replies) > 1 else 0
        if speed is not None and math.isinf(speed):
            speed = math.inf
        return Observation(prev, int(dev[0]) == 1, speed, devices, int(dev[2]))

    async def observe(self, ping: TrustPing, limits: TrustLimits) -> Observation:
        calls = self.calls(ping, limits)
        replies = await asyncio.gather(*(self._run(c.sha, c.script, c.keys, c.args) for c in calls))
        return self.observation(replies)

    async def _evalsha(
        self, sha: str, script: bytes, keys: Sequence[Any], args: Sequence[Any]
    ) -> Any:
        try:
            return await self._r.evalsha(sha, len(keys), *keys, *args)
        except NoScriptError:
            return await self._r.eval(script.decode(), len(keys), *keys, *args)

    async def forget_user(self, user_id: str, device_ids: list[str]) -> None:
        await self._r.delete(self.user_key(user_id))
        for device in {user_id, *device_ids}:
            for key in self.device_keys(device):
                await self._r.delete(key)

    async def close(self) -> None:
        await self._r.aclose()
