"""Sharing counts in the process (the embedded default: one process, so this is all of it)."""

from __future__ import annotations

import threading
from collections import OrderedDict

from service.trust.checks import Sharing

#: Devices and users whose sharing sets are kept (the least recently seen go first).
MAX_ENTRIES = 200_000
#: Members kept per sharing set: enough to count past any sensible limit.
MAX_MEMBERS = 64


class MemoryTrustStore:
    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        self._users_of_device: OrderedDict[str, dict[str, float]] = OrderedDict()
        self._devices_of_user: OrderedDict[str, dict[str, float]] = OrderedDict()
        self._max = max_entries
        self._lock = threading.Lock()

    async def observe(self, device_id: str, user_id: str, now: float, window_s: float) -> Sharing:
        with self._lock:
            users = self._count(self._users_of_device, device_id, user_id, now, window_s)
            devices = self._count(self._devices_of_user, user_id, device_id, now, window_s)
        return Sharing(devices, users)

    def _count(
        self,
        table: OrderedDict[str, dict[str, float]],
        key: str,
        member: str,
        now: float,
        window_s: float,
    ) -> int:
        seen = dict(table.get(key) or {})
        seen[member] = now
        since = now - window_s
        kept = sorted(((t, m) for m, t in seen.items() if t > since), reverse=True)[:MAX_MEMBERS]
        table[key] = {m: t for t, m in kept}
        table.move_to_end(key)
        while len(table) > self._max:
            table.popitem(last=False)
        return len(kept)

    async def forget_user(self, user_id: str, device_ids: list[str]) -> None:
        with self._lock:
            self._devices_of_user.pop(user_id, None)
            for device in {user_id, *device_ids}:
                self._users_of_device.pop(device, None)

    async def close(self) -> None:
        return None
