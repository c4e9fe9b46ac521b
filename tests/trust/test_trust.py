"""Trust checks (DESIGN §11) on the in-process store, real Redis and a 3-node Redis Cluster:
a mocked ping, New York → Los Angeles in a minute (refused until a plausible ping), a taxi
ride (fine), shared accounts and shared devices within 7 days."""

from __future__ import annotations

import math
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from prometheus_client import REGISTRY
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from service.trust import (
    Fix,
    MemoryTrustStore,
    RedisTrustStore,
    TrustCheck,
    TrustChecker,
    TrustLimits,
    TrustPing,
    implied_speed_kmh,
)

pytestmark = pytest.mark.anyio

NYC = (40.7128, -74.0060)
TIMES_SQUARE = (40.7580, -73.9855)
LA = (34.0522, -118.2437)
T0 = 1_795_000_000.0
DAY = 86_400.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def ping(
    at: tuple[float, float], t: float, device: str = "dev-1", user: str | None = None,
    mocked: bool = False, accuracy: float = 10.0, now: float | None = None,
) -> TrustPing:  # fmt: skip
    return TrustPing(device, user, Fix(at[0], at[1], T0 + t, accuracy), (now or T0 + t), mocked)


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


def failures(check: TrustCheck) -> float:
    return REGISTRY.get_sample_value("geo_offers_trust_suspected_total", {"check": check}) or 0.0


async def test_new_york_to_los_angeles_in_a_minute_is_refused_until_plausible(
    checker: TrustChecker,
) -> None:
    before = failures(TrustCheck.impossible_travel)
    assert (await checker.check(ping(NYC, 0))).ok
    jump = await checker.check(ping(LA, 60))
    assert jump.failed is TrustCheck.impossible_travel
    assert jump.explain()["check"] == "impossible_travel" and jump.explain()["speed_kmh"] > 200_000
    # Still in LA a minute later: compared with the last *accepted* fix (New York), refused.
    assert (await checker.check(ping(LA, 120))).failed is TrustCheck.impossible_travel
    # Back to a ride away from New York: plausible again.
    assert (await checker.check(ping(TIMES_SQUARE, 20 * 60))).ok
    # The real trip: Los Angeles 6 hours later (about 650 km/h) is fine.
    assert (await checker.check(ping(LA, 6 * 3600))).ok
    assert failures(TrustCheck.impossible_travel) - before == 2


async def test_a_taxi_ride_is_fine(checker: TrustChecker) -> None:
    t = 0.0
    lat, lng = NYC
    for _ in range(30):  # pings every 30 s at ~40 km/h, north-east across Manhattan
        t += 30
        lat, lng = lat + 0.0024, lng + 0.0008
        assert (await checker.check(ping((lat, lng), t, accuracy=25))).ok


async def test_a_mocked_ping_is_refused_and_not_taken_as_the_last_fix(
    checker: TrustChecker,
) -> None:
    before = failures(TrustCheck.mocked_location)
    assert (await checker.check(ping(NYC, 0))).ok
    mocked = await checker.check(ping(LA, 60, mocked=True))
    assert mocked.failed is TrustCheck.mocked_location and mocked.explain() == {
        "check": "mocked_location"
    }
    assert (await checker.check(ping(NYC, 120))).ok, "judged against New York, not the mock"
    assert (await checker.check(ping(NYC, 180, mocked=True))).failed is TrustCheck.mocked_location
    assert failures(TrustCheck.mocked_location) - before == 2


async def test_more_than_five_devices_for_one_user_within_seven_days(checker: TrustChecker) -> None:
    for i in range(5):
        assert (await checker.check(ping(NYC, i, device=f"d-{i}", user="shared"))).ok
    sixth = await checker.check(ping(NYC, 10, device="d-5", user="shared"))
    assert sixth.failed is TrustCheck.devices_per_user and sixth.explain()["devices"] == 6
    assert (await checker.check(ping(NYC, 20, device="d-0", user="shared"))).failed is (
        TrustCheck.devices_per_user
    ), "the account is shared: no device of it gets offers"
    assert (await checker.check(ping(NYC, 30, device="d-7", user="alone"))).ok
    # Eight days on, the old devices have left the window.
    later = ping(NYC, 8 * DAY, device="d-8", user="shared")
    assert (await checker.check(later)).ok


async def test_more_than_five_users_on_one_device_within_seven_days(checker: TrustChecker) -> None:
    for i in range(5):
        assert (await checker.check(ping(NYC, i, device="kiosk", user=f"u-{i}"))).ok
    sixth = await checker.check(ping(NYC, 10, device="kiosk", user="u-5"))
    assert sixth.failed is TrustCheck.users_per_device and sixth.explain()["users"] == 6
    assert (await checker.check(ping(NYC, 8 * DAY, device="kiosk", user="u-9"))).ok


async def test_two_replicas_share_the_state(redis_url: str, redis_prefix: str) -> None:
    a = TrustChecker(
        RedisTrustStore(aioredis.Redis.from_url(redis_url), redis_prefix), TrustLimits()
    )
    b = TrustChecker(
        RedisTrustStore(aioredis.Redis.from_url(redis_url), redis_prefix), TrustLimits()
    )
    try:
        assert (await a.check(ping(NYC, 0, user="u"))).ok
        assert (await b.check(ping(LA, 60, user="u"))).failed is TrustCheck.impossible_travel
        for i in range(1, 6):
            replica = (a, b)[i % 2]
            await replica.check(ping(NYC, 100 + i, device=f"d-{i}", user="u"))
        assert (await a.check(ping(NYC, 200, device="d-1", user="u"))).failed is (
            TrustCheck.devices_per_user
        )
    finally:
        await a.store.close()
        await b.store.close()


async def test_calls_can_be_pipelined_by_the_ping_path(redis_url: str, redis_prefix: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    store = RedisTrustStore(client, redis_prefix)
    try:
        limits = TrustLimits()
        assert len(store.calls(ping(NYC, 0), limits)) == 1, "no user id: the device script only"
        first = ping(NYC, 0, user="u")
        calls = store.calls(first, limits)
        assert [len(c.keys) for c in calls] == [2, 1]
        # The ping path's pipeline: its own script and these, one round trip.
        for c in calls:
            await client.script_load(c.script)
        pipe = client.pipeline(transaction=False)
        pipe.set(f"{redis_prefix}:{{d:dev-1}}:state", b"its own script")
        for c in calls:
            pipe.evalsha(c.sha, len(c.keys), *c.keys, *c.args)
        replies = await pipe.execute()
        seen = store.observation(replies[1:])
        assert seen.previous is None and seen.travel_ok and seen.devices_of_user == 1
        again = await store.observe(ping(LA, 60, user="u"), limits)
        assert not again.travel_ok and again.previous == first.fix
        # Cluster-safe: a device's keys share one slot; the user's are elsewhere.
        fix_key, users_key = store.device_keys("dev-{1}")
        assert key_slot(fix_key.encode()) == key_slot(users_key.encode())
        assert "{d:dev-%7B1%7D}" in fix_key
        await store.forget_user("u", ["dev-1"])
        assert not await client.exists(*store.device_keys("dev-1"), store.user_key("u"))
    finally:
        await store.close()
