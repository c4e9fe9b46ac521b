"""Trust checks (DESIGN §11): the fix judged against the device's last accepted one (a mocked
ping, New York → Los Angeles in a minute refused until a plausible ping, a taxi ride fine),
and the sharing counts (shared accounts and devices within 7 days) on the in-process store,
real Redis and a 3-node Redis Cluster. Through real pings: tests/service/test_trust_pings.py."""

from __future__ import annotations

import asyncio
import math
import random
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from service.settings import Settings
from service.state.base import Stored
from service.state.redis_store import RedisStateStore
from service.trust import (
    Fix,
    MemoryTrustStore,
    RedisTrustStore,
    TrustCheck,
    TrustChecker,
    TrustLimits,
    implied_speed_kmh,
    judge_fix,
)
from tests.helpers import offset

pytestmark = pytest.mark.anyio

NYC = (40.7128, -74.0060)
TIMES_SQUARE = (40.7580, -73.9855)
LA = (34.0522, -118.2437)
T0 = 1_795_000_000.0
DAY = 86_400.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def fix(at: tuple[float, float], t: float, accuracy: float = 10.0) -> Fix:
    return Fix(at[0], at[1], T0 + t, accuracy)


class Device:
    """A device's last accepted fix, carried from ping to ping as the state step does."""

    def __init__(self) -> None:
        self.last: Fix | None = None

    def ping(self, f: Fix | None, mocked: bool = False) -> TrustCheck | None:
        judged = judge_fix(self.last, f, mocked, Settings().max_speed_kmh)
        self.last = judged.last
        return judged.failed


def test_speed_between_two_fixes() -> None:
    ny, la = Fix(*NYC, 0, 10), Fix(*LA, 60, 10)
    assert implied_speed_kmh(ny, la) > 200_000
    assert 20 < implied_speed_kmh(ny, Fix(*TIMES_SQUARE, 15 * 60, 10)) < 30, "a taxi ride"
    # GPS jitter inside both accuracy radii is no move, even at the same instant.
    assert implied_speed_kmh(ny, Fix(NYC[0] + 0.0001, NYC[1], 0, 10)) == 0.0
    assert implied_speed_kmh(ny, Fix(*TIMES_SQUARE, 0, 10)) == math.inf
    # A huge claimed accuracy is no free pass: at most 1 km each is allowed for.
    assert implied_speed_kmh(Fix(*NYC, 0, 1e9), Fix(*LA, 60, 1e9)) > 200_000
    # Across the antimeridian: 2 km in a minute is 120 km/h, not half the planet.
    assert 100 < implied_speed_kmh(Fix(0, 179.99, 0, 0), Fix(0, -179.992, 60, 0)) < 140


def test_new_york_to_los_angeles_in_a_minute_is_refused_until_plausible() -> None:
    device = Device()
    assert device.ping(fix(NYC, 0)) is None
    assert device.ping(fix(LA, 60)) is TrustCheck.impossible_travel
    assert device.last == fix(NYC, 0), "a refused fix is not the last accepted one"
    # Still in LA a minute later: compared with the last *accepted* fix (New York), refused.
    assert device.ping(fix(LA, 120)) is TrustCheck.impossible_travel
    # Back to a ride away from New York: plausible again.
    assert device.ping(fix(TIMES_SQUARE, 20 * 60)) is None
    # The real trip: Los Angeles 6 hours later (about 650 km/h) is fine.
    assert device.ping(fix(LA, 6 * 3600)) is None and device.last == fix(LA, 6 * 3600)


def test_a_taxi_ride_is_fine() -> None:
    device, t = Device(), 0.0
    lat, lng = NYC
    for _ in range(30):  # pings every 30 s at ~40 km/h, north-east across Manhattan
        t += 30
        lat, lng = lat + 0.0024, lng + 0.0008
        assert device.ping(fix((lat, lng), t, accuracy=25)) is None


def test_a_mocked_ping_is_refused_and_not_taken_as_the_last_fix() -> None:
    device = Device()
    assert device.ping(fix(NYC, 0)) is None
    assert device.ping(fix(LA, 60), mocked=True) is TrustCheck.mocked_location
    assert device.ping(fix(NYC, 120)) is None, "judged against New York, not the mock"
    assert device.ping(fix(NYC, 180), mocked=True) is TrustCheck.mocked_location
    assert device.last == fix(NYC, 120)


def test_an_imprecise_ping_is_neither_judged_nor_kept() -> None:
    device = Device()
    assert device.ping(fix(NYC, 0)) is None
    assert device.ping(None) is None and device.last == fix(NYC, 0)


@pytest.fixture(params=["memory", "redis", "cluster"])
async def checker(
    request: pytest.FixtureRequest, redis_url: str, redis_prefix: str
) -> AsyncIterator[TrustChecker]:
    store: Any
    if request.param == "memory":
        store = MemoryTrustStore()
    elif request.param == "redis":
        store = RedisTrustStore(aioredis.Redis.from_url(redis_url), redis_prefix)
    else:
        url = request.getfixturevalue("cluster_url")
        store = RedisTrustStore(RedisCluster.from_url(url), f"t-{uuid.uuid4().hex[:8]}")
    yield TrustChecker(store, TrustLimits())
    await store.close()


async def sharing(checker: TrustChecker, device: str, user: str, t: float) -> TrustCheck | None:
    return await checker.sharing(device, user, T0 + t)


async def test_more_than_five_devices_for_one_user_within_seven_days(checker: TrustChecker) -> None:
    for i in range(5):
        assert await sharing(checker, f"d-{i}", "shared", i) is None
    assert await sharing(checker, "d-5", "shared", 10) is TrustCheck.devices_per_user
    assert await sharing(checker, "d-0", "shared", 20) is TrustCheck.devices_per_user, (
        "the account is shared: no device of it gets offers"
    )
    assert await sharing(checker, "d-7", "alone", 30) is None
    # Eight days on, the old devices have left the window.
    assert await sharing(checker, "d-8", "shared", 8 * DAY) is None


async def test_more_than_five_users_on_one_device_within_seven_days(checker: TrustChecker) -> None:
    for i in range(5):
        assert await sharing(checker, "kiosk", f"u-{i}", i) is None
    assert await sharing(checker, "kiosk", "u-5", 10) is TrustCheck.users_per_device
    assert await sharing(checker, "kiosk", "u-9", 8 * DAY) is None


async def test_erasure_forgets_the_user_and_the_users_seen_on_its_devices(
    checker: TrustChecker,
) -> None:
    for i in range(5):
        await sharing(checker, "kiosk", f"u-{i}", i)
        await sharing(checker, f"d-{i}", "gone", i)
    await checker.store.forget_user("gone", ["kiosk", *(f"d-{i}" for i in range(5))])
    assert await sharing(checker, "d-9", "gone", 10) is None, "its devices are forgotten"
    # The kiosk's users were forgotten with it: five new ones are fine again.
    for i in range(5):
        assert await sharing(checker, "kiosk", f"v-{i}", 20 + i) is None


async def test_two_replicas_share_the_counts(redis_url: str, redis_prefix: str) -> None:
    a = RedisTrustStore(aioredis.Redis.from_url(redis_url), redis_prefix)
    b = RedisTrustStore(aioredis.Redis.from_url(redis_url), redis_prefix)
    try:
        checkers = TrustChecker(a, TrustLimits()), TrustChecker(b, TrustLimits())
        for i in range(5):
            assert await sharing(checkers[i % 2], f"d-{i}", "u", i) is None
        assert await sharing(checkers[1], "d-5", "u", 10) is TrustCheck.devices_per_user
        # Cluster-safe: each side in its own slot, the hash tag closed whatever the id.
        assert "{d:dev-%7B1%7D}" in a.device_key("dev-{1}")
        assert key_slot(a.device_key("x").encode()) != key_slot(a.user_key("x").encode())
    finally:
        await a.close()
        await b.close()


@dataclass(frozen=True)
class _Stepped:
    """A state step's result, as the state store wants it."""

    state: dict[str, Any] | None
    reason: str = "no_trigger"
    answer: bytes = b"{}"
    pending: bool = False
    records: tuple[Any, ...] = ()  # no visit events


def _pairs(n: int) -> list[tuple[Fix, Fix | None]]:
    """(last accepted fix, the ping's fix) pairs at speeds up to twice the limit, on the
    whole globe, and the edges: no fix, the same instant, jitter, the antimeridian."""
    rng = random.Random(7)
    limit_mps = Settings().max_speed_kmh / 3.6
    pairs: list[tuple[Fix, Fix | None]] = [
        (fix(NYC, 0), None),
        (fix(NYC, 0), fix(TIMES_SQUARE, 0)),
        (fix(NYC, 0), Fix(NYC[0] + 0.0001, NYC[1], T0, 10)),
        (Fix(0, 179.99, T0, 0), Fix(0, -179.992, T0 + 60, 0)),
        (Fix(0, 179.99, T0, 0), Fix(0, -179.5, T0 + 60, 0)),
        (fix(NYC, 0, accuracy=1e9), fix(LA, 60, accuracy=1e9)),
    ]
    while len(pairs) < n:
        lat, lng = rng.uniform(-85, 85), rng.uniform(-180, 180)
        dt = rng.choice((1.0, 30.0, 600.0, 7200.0))
        speed = rng.uniform(0, 2 * limit_mps)
        if abs(speed - limit_mps) < 1.0:  # a hair from the limit: rounding may differ
            continue
        to = offset(lat, lng, rng.uniform(0, 360), speed * dt + 40)
        pairs.append((Fix(lat, lng, T0, 20), Fix(*to, T0 + dt, 20)))
    return pairs


async def _kept_by_script(
    url: str, prefix: str, device: str, prev: Fix, new: Fix | None, more: dict[str, Any]
) -> Any:
    """The last accepted fix the state script keeps when a ping in no fence, at ``new``,
    comes to a replica with no copy of the device, whose state holds ``prev``; ``more``:
    other fields of the state document, after the fix."""
    replica_a = RedisStateStore.from_url(url, prefix, 3600.0, 60)
    replica_b = RedisStateStore.from_url(url, prefix, 3600.0, 60)
    before = {"t": prev.ts, "in": {}, "f": prev.to_doc(), **more}
    ts = new.ts if new is not None else prev.ts + 1
    idle = {"t": ts, "in": {}} | ({"f": new.to_doc()} if new else {}) | more
    seen: list[dict[str, Any] | None] = []

    def look(doc: dict[str, Any] | None) -> _Stepped:
        seen.append(doc)
        return _Stepped(None)

    try:
        await replica_a.process(device, "p1", lambda _: _Stepped(before))
        out = await replica_b.process(device, "p2", lambda _: _Stepped(idle), None, ts)
        assert isinstance(out, Stored)
        await replica_a.process(device, "p3", look)  # its copy is behind: it reads Redis's
    finally:
        await replica_a.close()
        await replica_b.close()
    stored = seen[-1]
    assert stored is not None and stored["t"] == ts and stored | more == stored
    return stored["f"]


def test_the_state_scripts_idle_path_judges_fixes_as_judge_fix_does(
    redis_url: str, redis_prefix: str
) -> None:
    """A ping in no fence is stored by the state script without reading the state first;
    the script then judges its fix itself. It must agree with :func:`judge_fix`."""
    limit = Settings().max_speed_kmh

    async def main() -> None:
        for i, (prev, new) in enumerate(_pairs(200)):
            more = {"x": [1, {"y": "]"}]} if i % 50 == 0 else {}  # a field added later
            kept = await _kept_by_script(redis_url, redis_prefix, f"judge-{i}", prev, new, more)
            assert Fix.from_doc(kept) == judge_fix(prev, new, False, limit).last, (prev, new)

    asyncio.run(main())
