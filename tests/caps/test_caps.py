"""Frequency caps and budgets: every behaviour checked on the in-process store and on real Redis.

The ``cluster`` variant (optional, skipped when ``redis-server`` is missing) starts a private
3-node Redis Cluster on free local ports and runs the same tests through ``RedisCluster``.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.crc import key_slot

from service.caps import Cap, CapRequest, CapResult, CapStore, CapUnavailable
from service.caps.memory import MemoryCapStore
from service.caps.redis_caps import RedisCapStore

pytestmark = pytest.mark.anyio

DAY = 86_400
WEEK = 7 * DAY
T0 = 1_795_000_000.0  # a fixed epoch; tests move ``now`` from here


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# -- the stores under test ----------------------------------------------------------------


@pytest.fixture(params=["memory", "redis", "cluster"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[CapStore]:
    if request.param == "memory":
        s: CapStore = MemoryCapStore()
    elif request.param == "redis":
        s = RedisCapStore.from_url(
            request.getfixturevalue("redis_url"), request.getfixturevalue("redis_prefix")
        )
    else:
        s = RedisCapStore.from_url(
            request.getfixturevalue("cluster_url"), f"t{uuid.uuid4().hex[:8]}", cluster=True
        )
    try:
        yield s
    finally:
        await s.close()


def req(user: str = "alice", campaign: str = "cmp1", now: float = T0, **kw: Any) -> CapRequest:
    kw.setdefault("channel", "push")
    return CapRequest(user_key=user, campaign_id=campaign, issue_id=uuid.uuid4().hex, now=now, **kw)


def oks(results: list[CapResult]) -> int:
    return sum(r.ok for r in results)


# -- concurrency ----------------------------------------------------------------------------


async def test_cap_of_one_under_100_concurrent_acquires_issues_exactly_one(store: CapStore) -> None:
    caps = (Cap(1, DAY),)
    results = await asyncio.gather(*(store.acquire(req(campaign_caps=caps)) for _ in range(100)))
    assert oks(results) == 1
    refused = [r for r in results if not r.ok]
    assert {(r.reason, r.cap) for r in refused} == {("capped", "campaign:1/86400s")}
    use = await store.usage("alice", "cmp1", T0)
    assert use["campaign"] == use["global"] == use["channel:push"] == 1


async def test_budget_of_50_under_200_concurrent_users_issues_exactly_50(store: CapStore) -> None:
    reqs = [req(user=f"u{i}", campaign_caps=(Cap(1, DAY),), budget_total=50) for i in range(200)]
    results = await asyncio.gather(*(store.acquire(r) for r in reqs))
    assert oks(results) == 50
    assert {(r.reason, r.cap) for r in results if not r.ok} == {
        ("budget_exhausted", "budget:total")
    }
    assert (await store.usage("u0", "cmp1", T0))["budget:total"] == 50
    # A refused user kept no reservation.
    refused = next(r for r, res in zip(reqs, results, strict=True) if not res.ok)
    assert (await store.usage(refused.user_key, "cmp1", T0))["campaign"] == 0


async def test_per_day_budget_resets_on_the_next_budget_day(store: CapStore) -> None:
    day1: dict[str, Any] = dict(budget_per_day=2, budget_day="2026-11-23")
    results = [await store.acquire(req(user=f"u{i}", **day1)) for i in range(3)]
    assert [r.ok for r in results] == [True, True, False]
    assert results[2].cap == "budget:per_day" and results[2].reason == "budget_exhausted"
    nxt = await store.acquire(
        req(user="u9", budget_per_day=2, budget_day="2026-11-24", now=T0 + DAY)
    )
    assert nxt.ok
    use = await store.usage("u0", "cmp1", T0, budget_day="2026-11-23")
    assert use["budget:per_day"] == 2 and use["budget:total"] == 3


async def test_total_budget_is_checked_before_the_day_budget(store: CapStore) -> None:
    kw: dict[str, Any] = dict(budget_total=1, budget_per_day=1, budget_day="2026-11-23")
    assert (await store.acquire(req(user="a", **kw))).ok
    assert (await store.acquire(req(user="b", **kw))).cap == "budget:total"


# -- sliding windows and the scopes ---------------------------------------------------------


async def test_window_slides_with_now(store: CapStore) -> None:
    caps = (Cap(1, DAY),)
    assert (await store.acquire(req(campaign_caps=caps))).ok
    assert not (await store.acquire(req(campaign_caps=caps, now=T0 + DAY - 0.001))).ok
    # now - t < W no longer holds at exactly W.
    assert (await store.acquire(req(campaign_caps=caps, now=T0 + DAY))).ok


async def test_weekly_and_daily_caps_combined(store: CapStore) -> None:
    caps = (Cap(3, WEEK), Cap(1, DAY))
    assert (await store.acquire(req(campaign_caps=caps))).ok
    same_day = await store.acquire(req(campaign_caps=caps, now=T0 + 3600))
    assert same_day.cap == "campaign:1/86400s"
    assert (await store.acquire(req(campaign_caps=caps, now=T0 + DAY))).ok
    assert (await store.acquire(req(campaign_caps=caps, now=T0 + 2 * DAY))).ok
    fourth = await store.acquire(req(campaign_caps=caps, now=T0 + 3 * DAY))
    assert (fourth.reason, fourth.cap) == ("capped", "campaign:3/604800s")
    # The day-0 issuance leaves the week.
    assert (await store.acquire(req(campaign_caps=caps, now=T0 + WEEK))).ok


async def test_global_caps_count_across_campaigns(store: CapStore) -> None:
    glob = (Cap(2, DAY),)
    assert (await store.acquire(req(campaign="a", global_caps=glob))).ok
    assert (await store.acquire(req(campaign="b", global_caps=glob, now=T0 + 1))).ok
    third = await store.acquire(req(campaign="c", global_caps=glob, now=T0 + 2))
    assert (third.reason, third.cap) == ("capped", "global:2/86400s")
    assert (await store.acquire(req(user="bob", campaign="c", global_caps=glob))).ok


async def test_channel_caps_count_per_channel(store: CapStore) -> None:
    push = (Cap(1, DAY),)
    assert (await store.acquire(req(campaign="a", channel="push", channel_caps=push))).ok
    second = await store.acquire(req(campaign="b", channel="push", channel_caps=push, now=T0 + 1))
    assert (second.reason, second.cap) == ("capped", "channel:push:1/86400s")
    assert (await store.acquire(req(campaign="b", channel="in_app", channel_caps=push))).ok
    use = await store.usage("alice", "a", T0 + 2)
    assert (use["channel:push"], use["channel:in_app"], use["global"]) == (1, 1, 2)


async def test_min_gap_between_any_two_offers(store: CapStore) -> None:
    assert (await store.acquire(req(campaign="a", min_gap_s=1800))).ok
    early = await store.acquire(req(campaign="b", min_gap_s=1800, now=T0 + 1799))
    assert (early.reason, early.cap) == ("capped", "min_gap:1800s")
    assert (await store.acquire(req(campaign="b", min_gap_s=1800, now=T0 + 1800))).ok


async def test_user_caps_are_reported_before_budget_and_in_scope_order(store: CapStore) -> None:
    one = (Cap(1, DAY),)
    full: dict[str, Any] = dict(
        campaign_caps=one, global_caps=one, channel_caps=one, min_gap_s=60, budget_total=1
    )
    assert (await store.acquire(req(**full))).ok
    assert (await store.acquire(req(**full))).cap == "campaign:1/86400s"
    assert (await store.acquire(req(campaign="x", **full))).cap == "global:1/86400s"
    no_glob = {**full, "global_caps": ()}
    assert (await store.acquire(req(campaign="x", **no_glob))).cap == "channel:push:1/86400s"
    only_gap = {**no_glob, "channel_caps": ()}
    assert (await store.acquire(req(campaign="x", **only_gap))).cap == "min_gap:60s"
    # Another user is refused by the (exhausted) budget of cmp1, not by a cap.
    assert (await store.acquire(req(user="bob", **full))).cap == "budget:total"


# -- roll-back and release ------------------------------------------------------------------


async def test_a_refused_budget_step_leaves_no_user_reservation(store: CapStore) -> None:
    user_caps: dict[str, Any] = dict(global_caps=(Cap(1, DAY),), min_gap_s=3600)
    assert (await store.acquire(req(user="first", campaign="x", budget_total=1, **user_caps))).ok
    refused = await store.acquire(req(campaign="x", budget_total=1, **user_caps))
    assert refused.reason == "budget_exhausted"
    assert (await store.usage("alice", "x", T0))["global"] == 0
    # Global cap 1/day and a 1 h gap: this would be refused if the reservation had stayed.
    assert (await store.acquire(req(campaign="y", budget_total=5, now=T0 + 1, **user_caps))).ok


async def test_release_is_idempotent_and_restores_caps_and_budget(store: CapStore) -> None:
    kw: dict[str, Any] = dict(
        campaign_caps=(Cap(1, DAY),),
        global_caps=(Cap(1, DAY),),
        min_gap_s=600,
        budget_total=1,
        budget_per_day=1,
        budget_day="2026-11-23",
    )
    first = req(**kw)
    assert (await store.acquire(first)).ok
    assert not (await store.acquire(req(user="bob", **kw))).ok  # budget used up
    await store.release(first)
    await store.release(first)
    use = await store.usage("alice", "cmp1", T0, budget_day="2026-11-23")
    assert use == {
        "campaign": 0,
        "global": 0,
        "channel:push": 0,
        "channel:in_app": 0,
        "budget:total": 0,
        "budget:per_day": 0,
    }
    again = req(**kw, now=T0 + 1)
    assert (await store.acquire(again)).ok
    # Releasing a request that was refused (never counted) gives nothing back.
    refused = req(user="bob", **kw, now=T0 + 2)
    assert not (await store.acquire(refused)).ok
    await store.release(refused)
    use = await store.usage("alice", "cmp1", T0 + 2, budget_day="2026-11-23")
    assert (use["campaign"], use["budget:total"], use["budget:per_day"]) == (1, 1, 1)


async def test_retrying_the_same_issue_counts_it_once(store: CapStore) -> None:
    r = req(campaign_caps=(Cap(2, DAY),), budget_total=10)
    assert (await store.acquire(r)).ok
    assert (await store.acquire(r)).ok
    use = await store.usage("alice", "cmp1", T0)
    assert (use["campaign"], use["budget:total"]) == (1, 1)


async def test_no_caps_and_no_budget_always_allow(store: CapStore) -> None:
    assert oks(await asyncio.gather(*(store.acquire(req()) for _ in range(5)))) == 5


# -- Redis specifics ------------------------------------------------------------------------


@pytest.mark.parametrize("cluster", [False, True])
async def test_redis_down_is_cap_unavailable(cluster: bool) -> None:
    url = "redis://127.0.0.1:1/0"
    s = RedisCapStore.from_url(url, "geotest-down", cluster=cluster)
    r = req(campaign_caps=(Cap(1, DAY),), budget_total=1)
    try:
        with pytest.raises(CapUnavailable):
            await s.acquire(r)
        with pytest.raises(CapUnavailable):
            await s.release(r)
        with pytest.raises(CapUnavailable):
            await s.usage("alice", "cmp1", T0)
        assert await s.ready() is False
    finally:
        await s.close()


async def test_keys_of_one_user_and_of_one_campaign_share_a_slot(
    redis_url: str, redis_prefix: str
) -> None:
    s = RedisCapStore.from_url(redis_url, redis_prefix)
    try:
        for user in ["alice", "dev-7f3a", "we{ird}", "}{", "a%7Db"]:
            keys = {
                k
                for campaign in ["c1", "c2", "{x}"]
                for ch in ["push", "in_app"]
                for k in s.user_keys(user, campaign, ch)
            }
            assert len({key_slot(k.encode()) for k in keys}) == 1, user
        for campaign in ["c1", "spring-sale", "{x}"]:
            keys = {
                k
                for day in ["2026-11-23", "2026-11-24", ""]
                for issue in ["i1", "i2"]
                for k in s.budget_keys(campaign, day, issue)
            }
            assert len({key_slot(k.encode()) for k in keys}) == 1, campaign
        # The keys the store really writes are exactly these names.
        r = req(
            campaign_caps=(Cap(1, DAY),),
            global_caps=(Cap(1, DAY),),
            budget_total=5,
            budget_per_day=5,
            budget_day="2026-11-23",
        )
        assert (await s.acquire(r)).ok
        written = {k.decode() async for k in s._r.scan_iter(match=f"{redis_prefix}*")}
        expected = {
            *s.user_keys("alice", "cmp1", "push"),
            *s.budget_keys("cmp1", "2026-11-23", r.issue_id),
        }
        assert written == expected
        # Sets expire with the longest window; the day counter and the marker in ~2 days.
        ttls = {k: await s._r.ttl(k) for k in written}
        assert all(0 < ttls[k] <= DAY for k in s.user_keys("alice", "cmp1", "push"))
        total, day, mark = s.budget_keys("cmp1", "2026-11-23", r.issue_id)
        assert ttls[total] == -1 and 0 < ttls[day] <= 2 * DAY and 0 < ttls[mark] <= 2 * DAY
    finally:
        await s.close()


def test_prefix_with_a_brace_is_refused() -> None:
    with pytest.raises(ValueError):
        RedisCapStore(aioredis.Redis(), "bad{prefix}")


# -- the in-process store -------------------------------------------------------------------


async def test_memory_store_prunes_expired_entries() -> None:
    s = MemoryCapStore(sweep_every=1)
    kw: dict[str, Any] = dict(campaign_caps=(Cap(1, DAY),), budget_per_day=99, budget_day="d1")
    for i in range(50):
        assert (await s.acquire(req(user=f"u{i}", **kw))).ok
    assert len(s._hist) == 150 and len(s._marks) == 50
    await s.acquire(req(user="late", now=T0 + 3 * DAY, budget_per_day=9, budget_day="d4"))
    assert len(s._hist) == 0  # "late" has no user caps, so nothing of it is kept
    assert set(s._day) == {("cmp1", "d4")} and len(s._marks) == 1


def test_requests_are_validated() -> None:
    with pytest.raises(ValueError):
        req(budget_per_day=3)  # no budget_day
    with pytest.raises(ValueError):
        Cap(1, 0)
    with pytest.raises(ValueError):
        req(budget_total=-1)


# -- both stores agree ----------------------------------------------------------------------

_op = st.tuples(
    st.sampled_from(["u1", "u2"]),
    st.sampled_from(["c1", "c2"]),
    st.sampled_from(["push", "in_app"]),
    st.integers(min_value=0, max_value=30_000),  # seconds since the previous op
    st.integers(min_value=-1, max_value=4),  # >= 0: release the n-th last counted issue
)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(ops=st.lists(_op, min_size=1, max_size=25))
def test_memory_and_redis_agree_on_random_sequences(
    ops: list[tuple[str, str, str, int, int]], redis_url: str, redis_prefix: str
) -> None:
    base: dict[str, Any] = dict(
        campaign_caps=(Cap(2, DAY), Cap(1, 3 * 3600)),
        global_caps=(Cap(3, DAY),),
        channel_caps=(Cap(2, 12 * 3600),),
        min_gap_s=1800,
        budget_total=6,
        budget_per_day=4,
    )

    async def run() -> None:
        mem = MemoryCapStore()
        red = RedisCapStore.from_url(redis_url, f"{redis_prefix}:{uuid.uuid4().hex[:8]}")
        counted: list[CapRequest] = []
        now = T0
        try:
            for user, campaign, channel, dt, rel in ops:
                now += dt
                if 0 <= rel < len(counted):
                    gone = replace(counted.pop(-1 - rel), now=now)
                    await mem.release(gone)
                    await red.release(gone)
                    continue
                r = req(
                    user, campaign, now, channel=channel, budget_day=str(int(now // DAY)), **base
                )
                a, b = await mem.acquire(r), await red.acquire(r)
                assert a == b, (r, a, b)
                if a.ok:
                    counted.append(r)
            for user in ("u1", "u2"):
                for campaign in ("c1", "c2"):
                    day = str(int(now // DAY))
                    assert await mem.usage(user, campaign, now, budget_day=day) == await red.usage(
                        user, campaign, now, budget_day=day
                    )
        finally:
            await red.close()

    asyncio.run(run())
