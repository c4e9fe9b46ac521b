"""Trust checks (DESIGN §11): a spoofed location must not earn a coupon.

Four checks, judged in this order; the first that fails names the verdict:

- ``mocked_location``: the ping says ``mocked: true`` (Android ``isMock()``, iOS
  ``isSimulatedBySoftware``);
- ``impossible_travel``: the speed from the device's last *accepted* fix is above
  ``max_speed_kmh`` (900). A refused ping is not accepted, so the device stays refused until
  it pings plausibly relative to its last accepted fix again. Both fixes' accuracy radii are
  allowed for (at most 1 km each), so GPS jitter between two close pings is no jump;
- ``devices_per_user``: more than ``max_devices_per_user`` (5) devices sent this user id in
  ``window_s`` (7 days);
- ``users_per_device``: more than ``max_users_per_device`` (5) user ids on this device in
  the window.

A failed verdict means reason ``suspected_spoofing`` for every campaign that does not opt
out, with the check named in ``explain``; the device's visits are still recorded. Every
ping with a usable fix goes through :meth:`TrustChecker.check` (so the last accepted fix is
always the device's real previous one), at the cost of one Redis round trip that the ping
path may pipeline with its own script.

>>> a = Fix(lat=40.7128, lng=-74.0060, ts=0.0, accuracy_m=10)   # New York
>>> b = Fix(lat=34.0522, lng=-118.2437, ts=60.0, accuracy_m=10)  # Los Angeles, a minute on
>>> implied_speed_kmh(a, b) > 200_000
True
>>> taxi = Fix(lat=40.7580, lng=-73.9855, ts=15 * 60.0, accuracy_m=10)  # Times Square
>>> round(implied_speed_kmh(a, taxi))
21
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from prometheus_client import Counter

from geofences import sphere_distance_m

REASON = "suspected_spoofing"
#: Accuracy radii above this are not allowed for in the travel check (no free pass).
MAX_ACCURACY_ALLOWANCE_M = 1000.0
#: Half the Earth's circumference on the sphere: no two fixes are further apart.
MAX_DISTANCE_M = math.pi * 6_371_008.7714

TRUST_FAILURES = Counter(
    "geo_offers_trust_suspected_total",
    "Pings refused an offer as suspected spoofing, by the check that failed.",
    ["check"],
)


class TrustCheck(StrEnum):
    mocked_location = "mocked_location"
    impossible_travel = "impossible_travel"
    devices_per_user = "devices_per_user"
    users_per_device = "users_per_device"


for _check in TrustCheck:  # every check shows on /metrics from the start, at 0
    TRUST_FAILURES.labels(_check.value)


@dataclass(frozen=True, slots=True)
class Fix:
    lat: float
    lng: float
    ts: float  # the ping's own timestamp, epoch seconds
    accuracy_m: float


def implied_speed_kmh(prev: Fix, cur: Fix) -> float:
    """Speed needed to go from ``prev`` to ``cur``, allowing for both accuracy radii;
    ``inf`` for a real move in no time."""
    slack = min(prev.accuracy_m, MAX_ACCURACY_ALLOWANCE_M) + min(
        cur.accuracy_m, MAX_ACCURACY_ALLOWANCE_M
    )
    moved = sphere_distance_m(prev.lat, prev.lng, cur.lat, cur.lng) - slack
    if moved <= 0:
        return 0.0
    dt = abs(cur.ts - prev.ts)
    return math.inf if dt == 0 else moved / dt * 3.6


@dataclass(frozen=True, slots=True)
class TrustPing:
    """What the checks need of one ping. ``now``: the server's clock (epoch s), which the
    sharing windows use (a device's clock may lie)."""

    device_id: str
    user_id: str | None
    fix: Fix
    now: float
    mocked: bool = False


@dataclass(frozen=True, slots=True)
class TrustLimits:
    max_speed_kmh: float = 900.0
    max_devices_per_user: int = 5
    max_users_per_device: int = 5
    window_s: float = 7 * 86_400.0

    @classmethod
    def from_settings(cls, settings: Any) -> TrustLimits:
        return cls(
            max_speed_kmh=settings.max_speed_kmh,
            max_devices_per_user=settings.trust_max_devices_per_user,
            max_users_per_device=settings.trust_max_users_per_device,
            window_s=settings.trust_sharing_window_s,
        )

    @property
    def fix_ttl_s(self) -> float:
        """After this long any jump is possible at ``max_speed_kmh``: the last fix may go."""
        return MAX_DISTANCE_M / (self.max_speed_kmh / 3.6)


@dataclass(frozen=True, slots=True)
class Observation:
    """What a store saw when it recorded a ping (atomically)."""

    previous: Fix | None  # the device's last accepted fix before this ping
    travel_ok: bool  # the move from it is plausible (or there was none)
    speed_kmh: float | None
    devices_of_user: int  # distinct devices of the ping's user id in the window (0: none)
    users_of_device: int  # distinct user ids on the ping's device in the window


@dataclass(frozen=True, slots=True)
class TrustVerdict:
    failed: TrustCheck | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.failed is None

    def explain(self) -> dict[str, Any]:
        """For ``?explain=true``: ``{"check": …, …}`` of a failed verdict, else ``{}``."""
        return {} if self.failed is None else {"check": self.failed.value, **self.detail}


OK = TrustVerdict()


def judge(ping: TrustPing, seen: Observation, limits: TrustLimits) -> TrustVerdict:
    if ping.mocked:
        return TrustVerdict(TrustCheck.mocked_location)
    if not seen.travel_ok:
        speed = seen.speed_kmh
        detail = {"speed_kmh": None if speed is None or math.isinf(speed) else round(speed)}
        return TrustVerdict(TrustCheck.impossible_travel, detail)
    if seen.devices_of_user > limits.max_devices_per_user:
        return TrustVerdict(TrustCheck.devices_per_user, {"devices": seen.devices_of_user})
    if seen.users_of_device > limits.max_users_per_device:
        return TrustVerdict(TrustCheck.users_per_device, {"users": seen.users_of_device})
    return OK


class TrustStore(Protocol):
    async def observe(self, ping: TrustPing, limits: TrustLimits) -> Observation:
        """Record ``ping`` and say what was seen, atomically per device and per user: the
        fix becomes the device's last accepted one only if it is plausible and not mocked;
        the device and the user id are counted in each other's sharing window."""
        ...

    async def forget_user(self, user_id: str, device_ids: list[str]) -> None: ...

    async def close(self) -> None: ...


class TrustChecker:
    """What the ping pipeline calls: ``verdict = await checker.check(ping)``."""

    def __init__(self, store: TrustStore, limits: TrustLimits) -> None:
        self.store = store
        self.limits = limits

    async def check(self, ping: TrustPing) -> TrustVerdict:
        verdict = judge(ping, await self.store.observe(ping, self.limits), self.limits)
        if verdict.failed is not None:
            TRUST_FAILURES.labels(verdict.failed.value).inc()
        return verdict
