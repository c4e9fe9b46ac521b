"""Trust checks (DESIGN §11): a spoofed location must not earn a coupon.

Four checks; the first that fails names the verdict (reason ``suspected_spoofing``, the
check in ``explain``), for every campaign that does not opt out:

- ``mocked_location``: the ping says ``mocked: true`` (Android ``isMock()``, iOS
  ``isSimulatedBySoftware``);
- ``impossible_travel``: the speed from the device's last *accepted* fix is above
  ``max_speed_kmh`` (900). A refused or mocked fix is not accepted, so the device stays
  refused until it pings plausibly relative to its last accepted fix again. Both fixes'
  accuracy radii are allowed for (at most 1 km each), so GPS jitter between two close
  pings is no jump;
- ``devices_per_user``: more than ``max_devices_per_user`` (5) devices of this user id in
  ``window_s`` (7 days);
- ``users_per_device``: more than ``max_users_per_device`` (5) user ids on this device in
  the window.

The first two are judged by :func:`judge_fix` inside the device's state step: the last
accepted fix is part of the device-state document, so they cost no I/O. The sharing
checks are counted by a :class:`TrustStore` at the offer moment (a campaign passed step 4),
the only pings whose devices and users they count.

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
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from prometheus_client import Counter

from geofences import sphere_distance_m

#: Accuracy radii above this are not allowed for in the travel check (no free pass).
MAX_ACCURACY_ALLOWANCE_M = 1000.0

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


def count_failure(check: TrustCheck) -> None:
    """One ping refused an offer by ``check`` (``/metrics``)."""
    TRUST_FAILURES.labels(check.value).inc()


@dataclass(frozen=True, slots=True)
class Fix:
    lat: float
    lng: float
    ts: float  # the ping's own timestamp, epoch seconds
    accuracy_m: float

    def to_doc(self) -> list[float]:
        """As kept in the device-state document: ``[lat, lng, ts, accuracy_m]``."""
        return [self.lat, self.lng, self.ts, self.accuracy_m]

    @classmethod
    def from_doc(cls, doc: Sequence[Any] | None) -> Fix | None:
        return cls(*doc) if doc else None


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
class TrustLimits:
    """The sharing checks' limits (the travel check's is ``max_speed_kmh``, a setting the
    state step reads)."""

    max_devices_per_user: int = 5
    max_users_per_device: int = 5
    window_s: float = 7 * 86_400.0

    @classmethod
    def from_settings(cls, settings: Any) -> TrustLimits:
        return cls(
            max_devices_per_user=settings.trust_max_devices_per_user,
            max_users_per_device=settings.trust_max_users_per_device,
            window_s=settings.trust_sharing_window_s,
        )


@dataclass(frozen=True, slots=True)
class FixVerdict:
    """One ping's fix judged against the device's last accepted one."""

    failed: TrustCheck | None  # mocked_location, impossible_travel, or None
    last: Fix | None  # the device's last accepted fix after this ping


def judge_fix(prev: Fix | None, fix: Fix | None, mocked: bool, max_speed_kmh: float) -> FixVerdict:
    """``fix`` is None for a ping too imprecise to judge (it is neither refused nor kept).

    >>> ny, la = Fix(40.7128, -74.0060, 0.0, 10), Fix(34.0522, -118.2437, 60.0, 10)
    >>> judge_fix(ny, la, False, 900).failed
    <TrustCheck.impossible_travel: 'impossible_travel'>
    >>> judge_fix(ny, la, False, 900).last == ny  # a refused fix is not the last accepted one
    True
    """
    if mocked:
        return FixVerdict(TrustCheck.mocked_location, prev)
    if fix is None:
        return FixVerdict(None, prev)
    if prev is not None and implied_speed_kmh(prev, fix) > max_speed_kmh:
        return FixVerdict(TrustCheck.impossible_travel, prev)
    return FixVerdict(None, fix)


@dataclass(frozen=True, slots=True)
class Sharing:
    """What a store counted when it recorded a device and a user id together."""

    devices_of_user: int  # distinct devices of the user id in the window
    users_of_device: int  # distinct user ids on the device in the window


def judge_sharing(seen: Sharing, limits: TrustLimits) -> TrustCheck | None:
    if seen.devices_of_user > limits.max_devices_per_user:
        return TrustCheck.devices_per_user
    if seen.users_of_device > limits.max_users_per_device:
        return TrustCheck.users_per_device
    return None


class TrustUnavailable(Exception):
    """The sharing counts cannot be read: campaigns that check trust fail closed."""


class TrustStore(Protocol):
    async def observe(self, device_id: str, user_id: str, now: float, window_s: float) -> Sharing:
        """Record that ``device_id`` sent ``user_id`` at ``now`` (server clock, epoch s) and
        count both sides within ``window_s``; each side atomic (raises TrustUnavailable)."""
        ...

    async def forget_user(self, user_id: str, device_ids: list[str]) -> None:
        """Erasure: the user's devices, and the user ids seen on those devices."""
        ...

    async def close(self) -> None: ...


class TrustChecker:
    """The offer moment's sharing check: ``await checker.sharing(device, user, now)``."""

    def __init__(self, store: TrustStore, limits: TrustLimits) -> None:
        self.store = store
        self.limits = limits

    async def sharing(self, device_id: str, user_id: str, now: float) -> TrustCheck | None:
        seen = await self.store.observe(device_id, user_id, now, self.limits.window_s)
        return judge_sharing(seen, self.limits)
