"""Per-device flood control: token buckets per device id, in-process."""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from service.errors import TooManyRequests

MAX_TRACKED_DEVICES = 100_000


class DeviceRateLimiter:
    """Token buckets per device: ``burst`` pings at once, then ``rate_per_s`` sustained.

    In-process, so per replica: a device spread over N replicas gets N times the rate.
    That is fine for flood protection (this is not a billing limit). Memory is bounded:
    buckets refilled to full are forgotten (a new one is the same), and past
    ``max_devices`` the least recently seen device is dropped.

    >>> clock = iter([0.0, 0.0, 0.0]).__next__
    >>> limiter = DeviceRateLimiter(1.0, 2, clock=clock)
    >>> [limiter.acquire("d") for _ in range(3)]
    [0.0, 0.0, 1.0]
    """

    def __init__(
        self,
        rate_per_s: float,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_devices: int = MAX_TRACKED_DEVICES,
    ) -> None:
        self.rate_per_s = rate_per_s
        self.burst = float(burst)
        self.clock = clock
        self.max_devices = max_devices
        self._full_after_s = self.burst / rate_per_s if rate_per_s > 0 else math.inf
        # device -> (tokens, last update), least recently seen first
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._buckets)

    def acquire(self, device_id: str) -> float:
        """Take one token: 0.0 if allowed, else the seconds until the next token."""
        if self.rate_per_s <= 0:
            return 0.0
        with self._lock:
            now = self.clock()
            self._evict(now)
            tokens, last = self._buckets.pop(device_id, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate_per_s)
            if tokens >= 1.0:
                self._buckets[device_id] = (tokens - 1.0, now)
                return 0.0
            self._buckets[device_id] = (tokens, now)
            return (1.0 - tokens) / self.rate_per_s

    def _evict(self, now: float) -> None:
        buckets = self._buckets
        while buckets:
            device, (_, last) = next(iter(buckets.items()))
            if now - last < self._full_after_s and len(buckets) < self.max_devices:
                break
            del buckets[device]


def check_device_rate(app_state: Any, device_id: str) -> None:
    """Raise :class:`TooManyRequests` when ``device_id`` sends pings too fast.

    Call it once per request (a batch counts once). A no-op where the app has no limiter.
    """
    limiter: DeviceRateLimiter | None = getattr(app_state, "device_limiter", None)
    if limiter is None:
        return
    wait_s = limiter.acquire(device_id)
    if wait_s > 0:
        retry_after = max(1, math.ceil(wait_s))
        raise TooManyRequests(
            f"too many pings from this device; Retry-After: {retry_after} s",
            [{"field": "device_id", "reason": f"retry_after_s={retry_after}"}],
            headers={"Retry-After": str(retry_after)},
        )
