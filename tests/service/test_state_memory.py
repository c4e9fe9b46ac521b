"""What the state stores keep for long takes its own size in memory.

orjson's output holds a 4 KB allocation whatever its length; cached device states and
remembered answers are compacted before they are kept (``service.state.base.compact``).
Measured with tracemalloc, which counts allocations: deterministic, no timing involved.
"""

from __future__ import annotations

import asyncio
import tracemalloc
from dataclasses import dataclass
from typing import Any

import orjson

from service.state.base import ConsentDenied, compact
from service.state.memory import MemoryStateStore
from service.state.redis_store import RedisStateStore

N = 2_000


@dataclass(frozen=True)
class _Result:
    state: dict[str, Any]
    answer: bytes
    reason: str = "no_trigger"
    pending: bool = False
    records: tuple[Any, ...] = ()


def _step(ts: float) -> Any:
    def step(current: dict[str, Any] | None) -> _Result:
        answer = orjson.dumps({"ping_id": "p", "events": [], "offer": None, "reason": "x"})
        return _Result({"t": ts, "in": {}}, answer)

    return step


def _growth(run: Any) -> int:
    """Bytes still allocated after ``run()`` that were not before."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        keep = run()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    del keep
    return after - before


def test_compact_copies_into_a_buffer_of_its_own_length() -> None:
    raw = orjson.dumps({"t": 1.0, "in": {}})
    assert compact(raw) == raw
    # 100 orjson outputs hold ~400 KB; their compact copies a few KB.
    assert _growth(lambda: [orjson.dumps({"t": float(i), "in": {}}) for i in range(100)]) > 300_000
    raws = [orjson.dumps({"t": float(i), "in": {}}) for i in range(100)]
    assert _growth(lambda: [compact(r) for r in raws]) < 20_000


def test_redis_store_caches_compact_states(redis_url: str, redis_prefix: str) -> None:
    async def main() -> int:
        store = RedisStateStore.from_url(redis_url, redis_prefix, 3600.0, 60)
        try:
            for i in range(50):  # connections, script load: before the measurement
                await store.process(f"warm-{i}", "p", _step(1.0))

            async def many() -> None:
                for i in range(N):
                    await store.process(f"dev-{i}", "p", _step(1.0 + i))

            tracemalloc.start()
            before = tracemalloc.get_traced_memory()[0]
            await many()
            after = tracemalloc.get_traced_memory()[0]
            tracemalloc.stop()
            assert len(store._known) == N + 50
            return after - before
        finally:
            await store.close()

    growth = asyncio.run(main())
    # Cached state bytes and device ids: ~200 B per device; orjson's buffers would be 4 KB.
    assert growth < N * 600, growth


def test_memory_store_keeps_compact_answers() -> None:
    store = MemoryStateStore(3600.0, 3600.0)

    async def main() -> None:
        for i in range(N):
            await store.process(f"dev-{i}", "p", _step(1.0 + i))

    growth = _growth(lambda: asyncio.run(main()))
    assert growth < N * 1_000, growth


def test_the_cache_of_states_stays_bounded_and_keeps_the_newest() -> None:
    from service.state.redis_store import _Copies

    copies = _Copies(limit=100)
    for i in range(1_000):
        copies.put(f"d{i}", b"x")
        assert len(copies) <= 100
    assert copies.get("d999") == b"x" and copies.get("d950") == b"x"
    assert copies.get("d0") == b""
    copies.pop("d999")
    assert copies.get("d999") == b""


def test_consent_flags_are_refilled_once_for_the_new_device_key_layout(
    redis_url: str, redis_prefix: str
) -> None:
    """A Redis written by the previous layout (device flags under ``{d:<device>}``, the old
    marker) gets the flags under the new keys at the first start: flags only, no scan."""
    import redis as sync_redis

    client = sync_redis.Redis.from_url(redis_url)
    client.set(f"{redis_prefix}:{{denials}}:loaded", b"1")  # the old marker
    client.set(f"{redis_prefix}:{{d:phone-9}}:no_consent", b"1")  # an old device flag
    client.sadd(f"{redis_prefix}:{{u:u-9}}:devices", "phone-9")
    client.close()

    async def main() -> None:
        store = RedisStateStore.from_url(redis_url, redis_prefix, 3600.0, 60)
        try:
            assert not await store.denials_loaded(), "the new version loads them once"
            await store.load_denied(["u-9"])
            assert await store.denials_loaded()
            # The device pings without its user id: its own flag, under the new layout.
            assert isinstance(await store.process("phone-9", "p", _step(1.0)), ConsentDenied)
            outcome = await store.process("phone-1", "p", _step(1.0), user_key="u-9")
            assert isinstance(outcome, ConsentDenied), "and a new device of the user"
        finally:
            await store.close()

    asyncio.run(main())
