"""Device state in Redis: one compare-and-set Lua script per ping, Cluster-safe keys.

Every key of a device (state, remembered answers, consent flag) carries the hash tag of the
device's event partition, ``<prefix>:{ev:<n>}:d:<device_id>:…`` (``n`` from
:class:`service.events.streams.StreamLayout`), the tag of that partition's inbox stream too:
one script stores the step and XADDs its visit events to the inbox, on Redis Cluster as well.

The ping path costs one round trip in the steady state. A ping that matches no fence (most
pings: phones are rarely in a store) has the same outcome for every *idle* state (no visit,
last ping not later; ``idle_at`` of ``StateStore.process``), so the script stores it once it has
seen that the state is idle, whichever replica saw the device last. Any other ping's step is
computed from this replica's last known copy of the device's state and sent as a
compare-and-set; only when Redis holds something else (another replica moved the device on,
or this replica never saw it) does the script hand back the current state for a second
attempt. The copy is a cache of exact bytes, never trusted for a decision without the
compare: correctness does not depend on it, only speed. Behind a load balancer that spreads
a device's pings over N replicas, a ping inside a fence finds its replica's copy current
about 1/N of the time, so those pings cost two round trips (README, "Capacity").
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable
from typing import Any

import orjson
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError, RedisError

from geofences.sphere import EARTH_RADIUS_M
from service.events.streams import INBOX_XADD_LUA, StreamLayout, inbox_args
from service.redis_client import Client, redis_client
from service.settings import Settings
from service.state.base import (
    ConsentDenied,
    R,
    Replayed,
    StateUnavailable,
    Stored,
    compact,
    decode_answer,
    encode_answer,
)
from service.state.resp import LeanRedis, lean_client_supported
from service.trust.checks import MAX_ACCURACY_ALLOWANCE_M

# KEYS: state, answer, consent flag, the partition's inbox stream. ARGV: expected state
# ('' = none), new state ('' = keep), state ttl ms, answer
# (service.state.base.encode_answer), answer ttl s, idle ts ('' = compare with the expected
# state; else any idle state (StateStore.process, idle_at) at or before that ts will do),
# max speed m/s (DESIGN §11, for the idle path), then the step's events
# (service.events.streams.inbox_args; '0' when none).
# Returns {3} consent withdrawn | {0, first answer} | {1, current state or ''} |
# {2, 1 if the device had no state else 0, the state stored when not ARGV[2] else '',
#  inbox entry id…} stored.
#
# The idle path's new state was stepped from no state, so its last accepted fix ("f",
# service.trust.judge_fix) is the ping's own: the script judges it against the current
# state's, with the same rule and distance (geofences.sphere_distance_m), and keeps the
# current one when the ping's is missing (mocked, too imprecise) or implausible.
_CAS = (
    INBOX_XADD_LUA
    + """
local function fix(s)
  return string.match(s, '^%[([^,]+),([^,]+),([^,]+),([^,%]]+)%]$')
end
local function keeps(prev, new)
  local f = string.match(new, ',"f":(%b[])')
  if not f then return true end
  local plat, plng, pts, pacc = fix(prev)
  local lat, lng, ts, acc = fix(f)
  plat, plng, pts, pacc = tonumber(plat), tonumber(plng), tonumber(pts), tonumber(pacc)
  lat, lng, ts, acc = tonumber(lat), tonumber(lng), tonumber(ts), tonumber(acc)
  local r = math.pi / 180
  local slat, elat, dlng = plat * r, lat * r, (lng - plng) * r
  local cs, ss, ce, se, cd = math.cos(slat), math.sin(slat), math.cos(elat), math.sin(elat),
    math.cos(dlng)
  local a1, a2 = (ce * math.sin(dlng)) ^ 2, (cs * se - ss * ce * cd) ^ 2
  local b = ss * se + cs * ce * cd
  local moved = EARTH_RADIUS_M * math.atan2(math.sqrt(a1 + a2), b)
    - math.min(acc, ACCURACY_CAP_M) - math.min(pacc, ACCURACY_CAP_M)
  if moved <= 0 then return false end
  local dt = math.abs(ts - pts)
  return dt == 0 or moved / dt > tonumber(ARGV[7])
end
if redis.call('EXISTS', KEYS[3]) == 1 then return {3} end
local first = redis.call('GET', KEYS[2])
if first then return {0, first} end
local cur = redis.call('GET', KEYS[1])
local new = ARGV[2]
if ARGV[6] ~= '' then
  if cur then
    local t, rest = string.match(cur, '^{"t":([^,]+),"in":{}(.*)}$')
    if not t or tonumber(t) > tonumber(ARGV[6]) then return {1, cur} end
    local prev = string.match(rest, ',"f":(%b[])')
    if prev and keeps(prev, new) then
      local kept, n = string.gsub(new, ',"f":%b[]', ',"f":' .. prev, 1)
      new = n == 1 and kept or string.sub(new, 1, -2) .. ',"f":' .. prev .. '}'
    end
  end
elseif (cur or '') ~= ARGV[1] then return {1, cur or ''} end
if new ~= '' then redis.call('SET', KEYS[1], new, 'PX', ARGV[3]) end
redis.call('SET', KEYS[2], ARGV[4], 'EX', ARGV[5])
local stored = {2, 1, ''}
if cur then stored[2] = 0 end
if new ~= ARGV[2] then stored[3] = new end
if ARGV[8] ~= '0' then add_events(KEYS[4], 8, stored) end
return stored
""".replace("EARTH_RADIUS_M", repr(EARTH_RADIUS_M)).replace(
        "ACCURACY_CAP_M", repr(MAX_ACCURACY_ALLOWANCE_M)
    )
)
_CAS_SHA = hashlib.sha1(_CAS.encode()).hexdigest()

#: What follows "t" in a state with no visit, as the service writes it (the script checks
#: the same).
_NO_VISIT = b',"in":{}'
#: The script's events argument of a step with no event.
_NO_EVENTS = [b"0"]
MAX_ATTEMPTS = 50
#: Devices whose last state this replica remembers (bytes, for the compare-and-set).
CACHE_MAX = 200_000


class _Copies:
    """Device id -> last known state bytes, at most ``limit`` of them, in two generations:
    when the young one is full the old one is dropped and the young one takes its place.

    Popping the oldest entry of one dict (``next(iter(d))``) looked O(1) but scans the
    deleted slots at its front, up to the dict's spare capacity (~150 k at 200 k entries):
    past the bound every new device cost a long scan (a 24 % throughput drop in the
    new-device benchmark once the bound was reached).
    """

    __slots__ = ("limit", "old", "young")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.young: dict[str, bytes] = {}
        self.old: dict[str, bytes] = {}

    def __len__(self) -> int:
        return len(self.young) + len(self.old)

    def get(self, device_id: str, default: bytes = b"") -> bytes:
        raw = self.young.get(device_id)
        if raw is None:
            raw = self.old.get(device_id, default)
        return raw

    def put(self, device_id: str, raw: bytes) -> None:
        if len(self.young) >= self.limit // 2 and device_id not in self.young:
            self.old, self.young = self.young, {}
        self.young[device_id] = raw

    def pop(self, device_id: str, default: None = None) -> None:
        self.young.pop(device_id, None)
        self.old.pop(device_id, None)


def device_prefix(layout: StreamLayout, device_id: str) -> str:
    """The common start of a device's keys, ``<prefix>:{ev:<n>}:d:<device_id>``: its event
    partition's hash tag (shared with that partition's inbox stream), then the id.

    >>> device_prefix(StreamLayout("geo", 64), "phone-1")
    'geo:{ev:16}:d:phone-1'
    """
    return f"{layout.prefix}:{layout.tag(layout.partition(device_id))}:d:{device_id}"


class RedisStateStore:
    def __init__(
        self,
        client: Client,
        prefix: str,
        state_ttl_s: float,
        answer_ttl_s: int,
        lean: LeanRedis | None = None,
        partitions: int = Settings.model_fields["stream_partitions"].default,
        max_speed_kmh: float = Settings.model_fields["max_speed_kmh"].default,
    ) -> None:
        """``lean``, when given, carries the ping path's commands (the compare-and-set and
        the first-ping consent check); ``client`` (redis-py) carries everything else.
        ``partitions``: the event streams' (``stream_partitions``), whose tags the device
        keys carry. ``max_speed_kmh``: the trust setting the script judges idle pings'
        fixes with."""
        self._r = client
        self._lean = lean
        self._prefix = prefix
        self._layout = StreamLayout(prefix, partitions)
        self._state_ttl_ms = int(state_ttl_s * 1000)
        self._answer_ttl_s = answer_ttl_s
        self._max_speed_mps = repr(max_speed_kmh / 3.6)
        self._cas_script = _CAS.encode()
        self._cas = client.register_script(_CAS)  # redis-py's EVALSHA with a NOSCRIPT retry
        self._known = _Copies(CACHE_MAX)
        # One key, its own slot. Named anew with the device key layout of the visit events
        # (issue 14), so that the first start after the upgrade refills the consent flags.
        self._denials_marker = f"{prefix}:{{denials}}:loaded:ev"

    @classmethod
    def from_url(
        cls,
        url: str,
        prefix: str,
        state_ttl_s: float,
        answer_ttl_s: int,
        cluster: bool = False,
        partitions: int = Settings.model_fields["stream_partitions"].default,
        max_speed_kmh: float = Settings.model_fields["max_speed_kmh"].default,
    ) -> RedisStateStore:
        client = redis_client(url, cluster=cluster)
        lean = LeanRedis(url) if lean_client_supported(url, cluster) else None
        return cls(client, prefix, state_ttl_s, answer_ttl_s, lean, partitions, max_speed_kmh)

    async def _script(self, keys: list[Any], args: list[Any]) -> Any:
        if self._lean is not None:
            return await self._lean.evalsha(_CAS_SHA, self._cas_script, keys, args)
        return await self._cas(keys=keys, args=args)

    async def start(self) -> None:
        """Initialise a cluster client once, before concurrent use (redis-py asks for it)."""
        if isinstance(self._r, RedisCluster):
            with contextlib.suppress(RedisError):
                await self._r.initialize()

    def _device(self, device_id: str) -> str:
        return device_prefix(self._layout, device_id)

    def _inbox(self, device_id: str) -> str:
        return self._layout.inbox_key(self._layout.partition(device_id))

    def _keys(self, device_id: str, ping_key: str) -> tuple[str, str]:
        tag = self._device(device_id)
        return f"{tag}:state", f"{tag}:ping:{ping_key}"

    def _device_denied(self, device_id: str) -> str:
        return f"{self._device(device_id)}:no_consent"

    def _user_key(self, user_key: str, what: str) -> str:
        return f"{self._prefix}:{{u:{user_key}}}:{what}"

    async def process(
        self,
        device_id: str,
        ping_key: str,
        step: Callable[[dict[str, Any] | None], R],
        user_key: str | None = None,
        idle_at: float | None = None,
    ) -> Stored[R] | Replayed | ConsentDenied:
        tag = self._device(device_id)
        state_key, answer_key = f"{tag}:state", f"{tag}:ping:{ping_key}"
        keys = [state_key, answer_key, f"{tag}:no_consent", self._inbox(device_id)]
        known = self._known.get(device_id, b"")
        if idle_at is not None and known and not known.startswith(_NO_VISIT, known.find(b",")):
            idle_at = None  # this replica saw a visit last: the step on its copy is likelier right
        # A device this replica has no copy of may be new: its user's consent flag is read,
        # and the device linked to the user, in the same round trip as the script.
        admit = user_key if not known else None
        denied: bool | None = None
        try:
            for _ in range(MAX_ATTEMPTS):
                idle_ts: float | str
                if idle_at is not None:  # first attempt: any idle state will do
                    result = step(None)
                    idle_ts, idle_at = idle_at, None
                else:
                    result = step(orjson.loads(known) if known else None)
                    idle_ts = ""
                new_raw = orjson.dumps(result.state) if result.state is not None else b""
                answer = encode_answer(result.reason, result.answer, result.pending)
                args = [known, new_raw, self._state_ttl_ms, answer, self._answer_ttl_s, idle_ts,
                        self._max_speed_mps]  # fmt: skip
                args += inbox_args(result.records) if result.records else _NO_EVENTS
                res, admitted = await self._call(keys, args, admit, device_id)
                if admitted is not None:
                    denied, admit = not admitted, None
                if res[0] == 3:
                    self._known.pop(device_id, None)
                    return ConsentDenied()
                if res[0] == 0:
                    return decode_answer(bytes(res[1]))
                if res[0] == 1:  # Redis holds another state: retry from it
                    known = bytes(res[1])
                    self._remember(device_id, known)
                    continue
                if res[2]:  # the idle path kept the device's last accepted fix
                    new_raw = bytes(res[2])
                self._remember(device_id, new_raw or known)
                # A ping that started the device's state: its user's consent decides.
                if user_key is not None and res[1] == 1 and new_raw:
                    if denied is None:
                        denied = not await self._admit(user_key, device_id)
                    if denied:
                        await self._undo(device_id, state_key, answer_key, res[3:])
                        return ConsentDenied()
                return Stored(result)
        except RedisError as exc:
            raise StateUnavailable(str(exc)) from exc
        raise StateUnavailable(f"device {device_id!r} kept changing under {MAX_ATTEMPTS} attempts")

    def _remember(self, device_id: str, raw: bytes) -> None:
        self._known.put(device_id, compact(raw))

    async def _call(
        self, keys: list[Any], args: list[Any], admit: str | None, device_id: str
    ) -> tuple[Any, bool | None]:
        """One round trip: the script, and with ``admit`` (a user key) the user's consent
        flag read and the device linked to the user; the script's reply, and whether the
        user admits the device (None without ``admit``)."""
        if admit is None or self._lean is None:
            # redis-py (Redis Cluster): the consent check follows the script, as its own
            # round trip, for a device that turned out to be new (_admit).
            return await self._script(keys, args), None
        user_key = admit
        no_consent = self._user_key(user_key, "no_consent")
        devices = self._user_key(user_key, "devices")
        link = user_key != device_id
        commands: list[tuple[Any, ...]] = [(b"EXISTS", no_consent)]
        if link:
            commands += [(b"SADD", devices, device_id)]
            commands += [(b"PEXPIRE", devices, self._state_ttl_ms)]
        commands.append((b"EVALSHA", _CAS_SHA, len(keys), *keys, *args))
        replies = await self._lean.pipeline(*commands)
        for reply in replies[:-1]:
            if isinstance(reply, Exception):
                raise reply
        res = replies[-1]
        if isinstance(res, NoScriptError):
            res = await self._script(keys, args)
        elif isinstance(res, Exception):
            raise res
        return res, not replies[0]

    async def _admit(self, user_key: str, device_id: str) -> bool:
        """Consent check and link for a new device this replica had a copy of (its state
        expired in Redis meanwhile): the rare path, in its own round trips."""
        if await self._r.exists(self._user_key(user_key, "no_consent")):
            return False
        if user_key != device_id:
            devices = self._user_key(user_key, "devices")
            await self._r.sadd(devices, device_id)
            await self._r.pexpire(devices, self._state_ttl_ms)
        return True

    async def _undo(
        self, device_id: str, state_key: str, answer_key: str, entries: list[Any]
    ) -> None:
        """Consent was withdrawn: undo what this ping stored (its visit events included),
        and flag the device."""
        await self._r.delete(state_key, answer_key)
        if entries:
            await self._r.xdel(self._inbox(device_id), *entries)
        await self._r.set(self._device_denied(device_id), b"1")
        self._known.pop(device_id, None)

    async def _linked(self, user_key: str) -> set[str]:
        members = await self._r.smembers(self._user_key(user_key, "devices"))
        return {m.decode() if isinstance(m, bytes) else str(m) for m in members} | {user_key}

    async def deny(self, user_key: str) -> None:
        """Withdraw consent: the user's devices stop being processed from their next ping."""
        try:
            await self._r.set(self._user_key(user_key, "no_consent"), b"1")
            for device_id in await self._linked(user_key):
                await self._r.set(self._device_denied(device_id), b"1")
                await self.forget(device_id)
        except RedisError as exc:
            raise StateUnavailable(str(exc)) from exc

    async def allow(self, user_key: str) -> None:
        try:
            await self._r.delete(self._user_key(user_key, "no_consent"))
            for device_id in await self._linked(user_key):
                await self._r.delete(self._device_denied(device_id))
        except RedisError as exc:
            raise StateUnavailable(str(exc)) from exc

    async def load_denied(self, user_keys: list[str]) -> None:
        """Refill consent flags from the database (the truth): at start-up, whenever Redis
        has lost them (the marker key is gone with them), and once after the device key
        layout changed (the marker was renamed). Flags only: no device state of these users
        is held — their states were dropped when they were denied, or lost with the flags, or
        are under the old layout — so there is nothing to forget, and no keyspace scan per
        device (which :meth:`deny` does) against a full Redis at start-up."""
        try:
            for user_key in user_keys:
                await self._r.set(self._user_key(user_key, "no_consent"), b"1")
                for device_id in await self._linked(user_key):
                    await self._r.set(self._device_denied(device_id), b"1")
            await self._r.set(self._denials_marker, b"1")
        except RedisError as exc:
            raise StateUnavailable(str(exc)) from exc

    async def denials_loaded(self) -> bool:
        try:
            return bool(await self._r.exists(self._denials_marker))
        except RedisError as exc:
            raise StateUnavailable(str(exc)) from exc

    async def finish(self, device_id: str, ping_key: str, reason: str, answer: bytes) -> None:
        _, answer_key = self._keys(device_id, ping_key)
        record = encode_answer(reason, answer, False)
        try:
            if self._lean is not None:
                await self._lean.execute(b"SET", answer_key, record, b"EX", self._answer_ttl_s)
            else:
                await self._r.set(answer_key, record, ex=self._answer_ttl_s)
        except RedisError as exc:
            raise StateUnavailable(str(exc)) from exc

    async def answer(self, device_id: str, ping_key: str) -> Replayed | None:
        _, answer_key = self._keys(device_id, ping_key)
        try:
            raw = await self._r.get(answer_key)
        except RedisError as exc:
            raise StateUnavailable(str(exc)) from exc
        if raw is None:
            return None
        return decode_answer(raw if isinstance(raw, bytes) else raw.encode())

    async def devices_of(self, user_key: str) -> set[str]:
        """The devices linked to a user (for erasure)."""
        try:
            devices = await self._linked(user_key)
        except RedisError as exc:
            raise StateUnavailable(str(exc)) from exc
        return devices - {user_key}

    async def unlink(self, user_key: str) -> None:
        try:
            await self._r.delete(self._user_key(user_key, "devices"))
        except RedisError as exc:
            raise StateUnavailable(str(exc)) from exc

    async def forget(self, device_id: str) -> None:
        """Drop a device's state and remembered answers (consent withdrawn, erasure); the
        consent flag stays. Scans for the answers: meant for rare calls, not the ping path."""
        self._known.pop(device_id, None)
        tag = self._device(device_id)
        pattern = "".join("\\" + ch if ch in "*?[]\\" else ch for ch in tag)
        try:
            keys = [k async for k in self._r.scan_iter(match=f"{pattern}:ping:*", count=1000)]
            await self._r.delete(f"{tag}:state", *keys)
        except RedisError as exc:
            raise StateUnavailable(str(exc)) from exc

    async def ready(self) -> bool:
        try:
            return bool(await self._r.ping())
        except RedisError:
            return False

    async def close(self) -> None:
        if self._lean is not None:
            await self._lean.aclose()
        await self._r.aclose()
