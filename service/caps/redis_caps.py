"""Frequency caps and budgets in Redis: two Lua check-and-count scripts, Cluster-safe keys.

Key layout (``<p>`` is the store's prefix; ``{`` ``}`` and ``%`` inside ids are %-escaped so
the hash tag always ends where it should):

- ``<p>:{u:<user>}:c:<campaign>``, ``<p>:{u:<user>}:all``, ``<p>:{u:<user>}:ch:<channel>``:
  sorted sets, member issue_id, score time in ms; the ``all`` set also serves the minimum
  gap. One user's sets share the hash tag ``{u:<user>}``, hence one slot.
- ``<p>:{c:<campaign>}:total`` (counter), ``<p>:{c:<campaign>}:d:<day>`` (counter, TTL two
  days), ``<p>:{c:<campaign>}:i:<issue_id>`` (marker "this issue was counted", TTL two days):
  one campaign's budget keys share the hash tag ``{c:<campaign>}``.

On Redis Cluster one script may touch only one slot, so ``acquire`` runs in two steps: the
user script checks every user cap and, if all allow, adds the issuance to the user's sets;
then the budget script checks and increments the campaign counters. When the budget step
refuses, the user reservation is removed (ZREM issue_id) before ``budget_exhausted`` is
returned. This is still exact:

- the budget is only ever incremented by its own atomic script, for a request that already
  holds its user reservation, so the budget can never over-issue;
- each user cap is checked and counted by one atomic script, so it can never over-issue;
- the only window of inconsistency is a user reservation that is about to be rolled back.
  A concurrent request of the same user can see it and be refused: that fails closed (one
  offer fewer), never one too many.

A reply lost on the way back (a timeout), or a caller cancelled between the two steps, may
likewise leave a reservation counted for an offer that was never issued — again fail
closed. Retrying ``acquire`` with the same issue_id does not count twice: both scripts
recognise an issue they already counted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import RedisClusterException, RedisError

from service.caps.base import (
    BUDGET_DAY_TTL_S,
    BUDGET_PER_DAY,
    BUDGET_TOTAL,
    CHANNELS,
    OK,
    CapRequest,
    CapResult,
    CapUnavailable,
    capped,
)
from service.redis_client import Client, redis_client
from service.state.resp import LeanRedis, lean_client_supported

# KEYS: campaign set, all set, channel set (the check order).
# ARGV: now ms, issue id, retention ms, min gap ms (0 = none), then for each of the three sets
# n followed by n pairs (count, window ms).
# Returns {0} counted (or counted before) | {1, scope 0-3, cap index 0-based} capped.
_USER = """
local now = tonumber(ARGV[1])
local id = ARGV[2]
local keep = tonumber(ARGV[3])
if redis.call('ZSCORE', KEYS[2], id) then return {0} end
for i = 1, 3 do redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now - keep) end
local pos = 5
for scope = 1, 3 do
  local n = tonumber(ARGV[pos])
  pos = pos + 1
  for j = 1, n do
    local count, window = tonumber(ARGV[pos]), tonumber(ARGV[pos + 1])
    pos = pos + 2
    if redis.call('ZCOUNT', KEYS[scope], '(' .. (now - window), '+inf') >= count then
      return {1, scope - 1, j - 1}
    end
  end
end
local gap = tonumber(ARGV[4])
if gap > 0 and redis.call('ZCOUNT', KEYS[2], '(' .. (now - gap), '+inf') > 0 then
  return {1, 3, 0}
end
for i = 1, 3 do
  redis.call('ZADD', KEYS[i], now, id)
  if redis.call('PTTL', KEYS[i]) < keep then redis.call('PEXPIRE', KEYS[i], keep) end
end
return {0}
"""

# KEYS: campaign set, all set, channel set. ARGV: issue id.
_USER_RELEASE = """
for i = 1, 3 do redis.call('ZREM', KEYS[i], ARGV[1]) end
return 0
"""

# KEYS: total counter, day counter, issue marker.
# ARGV: total limit (-1 = none), day limit (-1 = none), count the day ('1'/'0'), ttl s.
# Returns 0 counted (or counted before) | 1 total exhausted | 2 day exhausted.
_BUDGET = """
if redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
local total_limit, day_limit = tonumber(ARGV[1]), tonumber(ARGV[2])
if total_limit >= 0 and tonumber(redis.call('GET', KEYS[1]) or '0') >= total_limit then
  return 1
end
if day_limit >= 0 and tonumber(redis.call('GET', KEYS[2]) or '0') >= day_limit then
  return 2
end
redis.call('INCR', KEYS[1])
if ARGV[3] == '1' then
  redis.call('INCR', KEYS[2])
  redis.call('EXPIRE', KEYS[2], ARGV[4])
end
redis.call('SET', KEYS[3], ARGV[3], 'EX', ARGV[4])
return 0
"""

# KEYS: total counter, day counter, issue marker. Only an issue that was counted (its marker
# is there) gives its budget back, once.
_BUDGET_RELEASE = """
local mark = redis.call('GET', KEYS[3])
if not mark then return 0 end
redis.call('DEL', KEYS[3])
if tonumber(redis.call('GET', KEYS[1]) or '0') > 0 then redis.call('DECR', KEYS[1]) end
if mark == '1' and tonumber(redis.call('GET', KEYS[2]) or '0') > 0 then
  redis.call('DECR', KEYS[2])
end
return 1
"""

# Both steps in one script, for a single Redis endpoint (one slot rule does not apply): one
# round trip per acquire. KEYS: the user script's three, then the budget script's three.
# ARGV: n (the user script's argument count, 0 = no user caps), its n arguments, then the
# budget script's four ('' = no budget). Returns {0} counted | {1, scope, index} capped |
# {2, 1 total | 2 day} budget exhausted (the user reservation given back).
_BOTH = (
    "local function user(KEYS, ARGV)\n" + _USER + "\nend\n"
    "local function budget(KEYS, ARGV)\n" + _BUDGET + "\nend\n"
    """
local n = tonumber(ARGV[1])
if n > 0 then
  local r = user({KEYS[1], KEYS[2], KEYS[3]}, {unpack(ARGV, 2, n + 1)})
  if r[1] == 1 then return r end
end
if ARGV[n + 2] == '' then return {0} end
local code = budget({KEYS[4], KEYS[5], KEYS[6]}, {unpack(ARGV, n + 2, n + 5)})
if code == 0 then return {0} end
if n > 0 then for i = 1, 3 do redis.call('ZREM', KEYS[i], ARGV[3]) end end
return {2, code}
"""
)

#: what either client raises when Redis cannot answer (cluster errors are not all RedisError)
_ERRORS = (RedisError, RedisClusterException, OSError)


def _esc(part: str) -> str:
    """Keep an id from ending (or opening) the hash tag early."""
    return part.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")


class RedisCapStore:
    """Caps and budgets on a Redis server or a Redis Cluster (``client`` may be either)."""

    def __init__(
        self, client: Client, prefix: str, max_in_flight: int = 64, lean: LeanRedis | None = None
    ) -> None:
        """``lean``, when given, carries the check-and-count scripts (the offer path);
        ``client`` (redis-py) everything else."""
        if "{" in prefix or "}" in prefix:
            # A brace in the prefix would become the hash tag of every key.
            raise ValueError("prefix must not contain '{' or '}'")
        self._r = client
        self._lean = lean
        self._prefix = prefix
        self._user = client.register_script(_USER)
        self._user_release = client.register_script(_USER_RELEASE)
        self._budget = client.register_script(_BUDGET)
        self._budget_release = client.register_script(_BUDGET_RELEASE)
        self._both = client.register_script(_BOTH)
        # Both clients refuse (rather than wait) once a pool is out of connections, so a
        # burst of pings queues here instead of failing closed for no reason.
        self._gate = asyncio.Semaphore(max_in_flight)
        # A RedisCluster client left to initialise lazily does so once per concurrent first
        # command, and those racing initialisations break each other's connections; redis-py
        # asks asyncio users to call ``initialize()`` first, so we do, once, under a lock.
        self._cluster_ready = not isinstance(client, RedisCluster)
        self._init_lock = asyncio.Lock()

    @classmethod
    def from_url(cls, url: str, prefix: str, *, cluster: bool = False) -> RedisCapStore:
        client = redis_client(url, cluster=cluster)
        lean = LeanRedis(url) if lean_client_supported(url, cluster) else None
        return cls(client, prefix, lean=lean)

    # -- key names ---------------------------------------------------------------------

    def user_keys(self, user_key: str, campaign_id: str, channel: str) -> tuple[str, str, str]:
        """The campaign, all and channel sets of a user, in the order the script checks."""
        tag = f"{self._prefix}:{{u:{_esc(user_key)}}}"
        return f"{tag}:c:{campaign_id}", f"{tag}:all", f"{tag}:ch:{channel}"

    def budget_keys(self, campaign_id: str, budget_day: str, issue_id: str) -> tuple[str, str, str]:
        """The total counter, the day counter and the issue marker of a campaign."""
        tag = f"{self._prefix}:{{c:{_esc(campaign_id)}}}"
        return f"{tag}:total", f"{tag}:d:{budget_day}", f"{tag}:i:{issue_id}"

    # -- the store ---------------------------------------------------------------------

    @staticmethod
    def _user_args(req: CapRequest) -> list[str | int]:
        args: list[str | int] = [req.now_ms, req.issue_id, req.retention_ms, req.min_gap_ms]
        for caps in (req.campaign_caps, req.global_caps, req.channel_caps):
            args.append(len(caps))
            for cap in caps:
                args += [cap.count, cap.window_s * 1000]
        return args

    @staticmethod
    def _budget_args(req: CapRequest) -> list[str | int]:
        return [
            -1 if req.budget_total is None else req.budget_total,
            -1 if req.budget_per_day is None else req.budget_per_day,
            1 if req.budget_day else 0,
            BUDGET_DAY_TTL_S,
        ]

    async def acquire(self, req: CapRequest) -> CapResult:
        user_keys = self.user_keys(req.user_key, req.campaign_id, req.channel)
        keep = req.retention_ms
        if self._lean is not None:
            return await self._acquire_at_once(req, user_keys)
        try:
            # Without any user cap nothing is recorded: nothing to enforce, and no window to
            # say how long to keep it.
            if keep > 0:
                res = await self._run(self._user, user_keys, self._user_args(req))
                if int(res[0]) == 1:
                    return capped(req, int(res[1]), int(res[2]))
            if not req.has_budget:
                return OK
        except _ERRORS as exc:
            raise CapUnavailable(str(exc)) from exc

        try:
            code = await self._run(
                self._budget,
                self.budget_keys(req.campaign_id, req.budget_day, req.issue_id),
                self._budget_args(req),
            )
        except _ERRORS as exc:
            # The reservation must not outlive a budget step we cannot see the end of; if
            # this fails too, it only keeps the user capped a little longer (fail closed).
            await self._drop_reservation(user_keys, req.issue_id, keep)
            raise CapUnavailable(str(exc)) from exc
        if int(code) == 0:
            return OK
        # Refused: give the user-scope reservation back before answering.
        try:
            await self._drop_reservation(user_keys, req.issue_id, keep, raise_errors=True)
        except _ERRORS as exc:
            raise CapUnavailable(str(exc)) from exc
        return BUDGET_TOTAL if int(code) == 1 else BUDGET_PER_DAY

    async def _acquire_at_once(self, req: CapRequest, user_keys: tuple[str, str, str]) -> CapResult:
        """Both steps in one script and one round trip (a single Redis endpoint)."""
        user_args = self._user_args(req) if req.retention_ms > 0 else []
        budget_args = self._budget_args(req) if req.has_budget else [""]
        keys = [*user_keys, *self.budget_keys(req.campaign_id, req.budget_day, req.issue_id)]
        try:
            res = await self._run(self._both, keys, [len(user_args), *user_args, *budget_args])
        except _ERRORS as exc:
            raise CapUnavailable(str(exc)) from exc
        if int(res[0]) == 1:
            return capped(req, int(res[1]), int(res[2]))
        if int(res[0]) == 2:
            return BUDGET_TOTAL if int(res[1]) == 1 else BUDGET_PER_DAY
        return OK

    async def _drop_reservation(
        self, keys: tuple[str, str, str], issue_id: str, keep: int, *, raise_errors: bool = False
    ) -> None:
        if keep <= 0:
            return
        try:
            # Shielded: a cancelled caller must not leave the reservation behind.
            await asyncio.shield(self._run(self._user_release, keys, [issue_id]))
        except _ERRORS:
            if raise_errors:
                raise

    async def _run(self, script: AsyncScript, keys: Sequence[str], args: list[str | int]) -> Any:
        if self._lean is not None:  # pipelined on one connection: no pool to run out of
            source = script.script
            body = source.encode() if isinstance(source, str) else bytes(source)
            return await self._lean.evalsha(script.sha, body, list(keys), list(args))
        await self._initialize()
        async with self._gate:
            return await script(keys=keys, args=args)

    async def _initialize(self) -> None:
        if self._cluster_ready:
            return
        async with self._init_lock:
            if not self._cluster_ready and isinstance(self._r, RedisCluster):
                await self._r.initialize()
                self._cluster_ready = True

    async def release(self, req: CapRequest) -> None:
        try:
            await self._run(
                self._user_release,
                self.user_keys(req.user_key, req.campaign_id, req.channel),
                [req.issue_id],
            )
            if req.has_budget:
                await self._run(
                    self._budget_release,
                    self.budget_keys(req.campaign_id, req.budget_day, req.issue_id),
                    [],
                )
        except _ERRORS as exc:
            raise CapUnavailable(str(exc)) from exc

    async def usage(
        self,
        user_key: str,
        campaign_id: str,
        now: float,
        *,
        window_s: int = 86_400,
        budget_day: str = "",
    ) -> dict[str, int]:
        since = f"({round(now * 1000) - window_s * 1000}"
        c_key, all_key, _ = self.user_keys(user_key, campaign_id, "")
        sets = {"campaign": c_key, "global": all_key}
        for ch in CHANNELS:
            sets[f"channel:{ch}"] = self.user_keys(user_key, campaign_id, ch)[2]
        total_key, day_key, _ = self.budget_keys(campaign_id, budget_day, "")
        try:
            await self._initialize()
            out = {n: int(await self._r.zcount(k, since, "+inf")) for n, k in sets.items()}
            out["budget:total"] = int(await self._r.get(total_key) or 0)
            if budget_day:
                out["budget:per_day"] = int(await self._r.get(day_key) or 0)
        except _ERRORS as exc:
            raise CapUnavailable(str(exc)) from exc
        return out

    async def forget_user(self, user_key: str) -> None:
        """Erase a user's cap history (the user's keys all live in one slot)."""
        tag = f"{self._prefix}:{{u:{_esc(user_key)}}}"
        pattern = "".join("\\" + ch if ch in "*?[]\\" else ch for ch in tag) + ":*"
        try:
            await self._initialize()
            keys = [k async for k in self._r.scan_iter(match=pattern, count=1000)]
            for key in keys:
                await self._r.delete(key)
        except _ERRORS as exc:
            raise CapUnavailable(str(exc)) from exc

    async def ready(self) -> bool:
        try:
            await self._initialize()
            return bool(await self._r.ping())
        except _ERRORS:
            return False

    async def close(self) -> None:
        if self._lean is not None:
            await self._lean.aclose()
        await self._r.aclose()
