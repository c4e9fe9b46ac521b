"""Trust state in the process (the embedded default: one process, so this is all of it)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import TypeVar

from service.trust.checks import Fix, Observation, TrustLimits, TrustPing, implied_speed_kmh

#: Devices and users whose trust state is kept (the least recently seen go first).
MAX_ENTRIES = 200_000
#: Members kept per sharing set: enough to count past any sensible limit.
MAX_MEMBERS = 64

V = TypeVar("V")


class MemoryTrustStore:
    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        self._fixes: OrderedDict[str, Fix] = OrderedDict()
        self._users_of_device: OrderedDict[str, dict[str, float]] = OrderedDict()
        self._devices_of_user: OrderedDict[str, dict[str, float]] = OrderedDict()
        self._max = max_entries
        self._lock = threading.Lock()

    async def observe(self, ping: TrustPing, limits: TrustLimits) -> Observation:
        with self._lock:
            return self._observe(ping, limits)

    def _observe(self, ping: TrustPing, limits: TrustLimits) -> Observation:
        fix = ping.fix
        prev = self._fixes.get(ping.device_id)
        if prev is not None and abs(fix.ts - prev.ts) > limits.fix_ttl_s:
            prev = None
        speed = implied_speed_kmh(prev, fix) if prev is not None else None
        travel_ok = speed is None or speed <= limits.max_speed_kmh
        if travel_ok and not ping.mocked and (prev is None or fix.ts >= prev.ts):
            self._put(self._fixes, ping.device_id, fix)
        users = devices = 0
        if ping.user_id is not None:
            users = self._count(self._users_of_device, ping.device_id, ping.user_id, ping, limits)
            devices = self._count(self._devices_of_user, ping.user_id, ping.device_id, ping, limits)
        return Observation(prev, travel_ok, speed, devices, users)

    def _count(
        self,
        table: OrderedDict[str, dict[str, float]],
        key: str,
        member: str,
        ping: TrustPing,
        limits: TrustLimits,
    ) -> int:
        seen = dict(table.get(key) or {})
        seen[member] = ping.now
        since = ping.now - limits.window_s
        kept = sorted(((t, m) for m, t in seen.items() if t > since), reverse=True)[:MAX_MEMBERS]
        self._put(table, key, {m: t for t, m in kept})
        return len(kept)

    def _put(self, table: OrderedDict[str, V], key: str, value: V) -> None:
        table[key] = value
        table.move_to_end(key)
        while len(table) > self._max:
            table.popitem(last=False)

    async def forget_user(self, user_id: str, device_ids: list[str]) -> None:
        with self._lock:
            self._devices_of_user.pop(user_id, None)
            for device in {user_id, *device_ids}:
                self._fixes.pop(device, None)
                self._users_of_device.pop(device, None)

    async def close(self) -> None:
        return None
