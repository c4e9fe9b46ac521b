"""Events in Redis Streams, read the way a consumer reads them (XREADGROUP / XACK): the relay
from the log (bounded, partitioned, at-least-once under one id), the inbox a Redis script
writes visit events to, and a 3-node Redis Cluster spreading the partitions."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio.to_thread
import pytest
import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot
from sqlalchemy import Connection, Engine, select
from sqlalchemy.exc import DataError

from service.db.engine import make_engine
from service.events import log as event_log
from service.events import streams as streams_mod
from service.events.streams import (
    INBOX_XADD_LUA,
    EventStreams,
    StreamLayout,
    entry_event,
    entry_fields,
    inbox_args,
)
from service.events.types import Event, user_erased, visit_event
from service.settings import Settings
from service.webhooks import repository as webhooks_repo
from tests.service.conftest import Api

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def blocking(fn: Any, *args: Any) -> Any:
    return await anyio.to_thread.run_sync(fn, *args)


def visit(device: str, n: int = 0) -> Event:
    return visit_event(
        "enter", device_id=device, user_id=None, store_id="s-1", ping_key=f"p-{n}",
        occurred_at=datetime.now(UTC), store_tags=["downtown"],
    )  # fmt: skip


@pytest.fixture
def engine(pg_settings: Settings) -> Iterator[Engine]:
    engine = make_engine(pg_settings)
    yield engine
    engine.dispose()


@pytest.fixture
async def streams(redis_url: str, redis_prefix: str) -> AsyncIterator[EventStreams]:
    client = aioredis.Redis.from_url(redis_url)
    s = EventStreams(client, StreamLayout(redis_prefix, 8), 1000, "test-consumer")
    yield s
    await s.close()


def record(engine: Engine, events: list[Event]) -> None:
    with engine.begin() as conn:
        event_log.record(conn, events)


async def consume(client: Any, keys: list[str], group: str = "crm") -> list[tuple[str, Event]]:
    """What a consumer group reads from every partition (the README's consumer, in a test)."""
    out = []
    for key in keys:
        try:
            await client.xgroup_create(key, group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            assert "BUSYGROUP" in str(exc)
        while True:
            batch = await client.xreadgroup(group, "worker-1", {key: ">"}, count=100)
            if not batch:
                break
            for _, entries in batch:
                for entry_id, fields in entries:
                    event = entry_event(fields)
                    assert fields[b"id"].decode() == event.id
                    out.append((key, event))
                    await client.xack(key, group, entry_id)
    return out


def test_entry_format_round_trips() -> None:
    e = user_erased(user_id="u", erasure_id="e", occurred_at=datetime.now(UTC))
    fields = entry_fields(e)
    assert set(fields) == {"id", "type", "envelope", "tags"}
    back = entry_event({k.encode(): v for k, v in fields.items()})
    assert back == e
    with pytest.raises(ValueError):
        entry_event({b"id": b"x", b"envelope": b"{}"})


async def test_relay_xadds_every_event_to_its_partition_once(
    engine: Engine, streams: EventStreams
) -> None:
    events = [visit(f"dev-{i}", i) for i in range(200)]
    events.append(user_erased(user_id="u-1", erasure_id="e-1", occurred_at=datetime.now(UTC)))
    await blocking(record, engine, events)
    assert await streams.relay(engine, blocking, limit=150) == 150
    assert await streams.relay(engine, blocking, limit=150) == 51
    assert await streams.relay(engine, blocking) == 0, "each once"
    layout = streams.layout
    got = await consume(streams.client, layout.events_keys())
    assert sorted(e.id for _, e in got) == sorted(e.id for e in events)
    by_id = {e.id: e for e in events}
    for key, e in got:
        assert e == by_id[e.id]
        assert key == layout.events_key(layout.partition(e.partition_key))
    used = {key for key, _ in got}
    assert len(used) == layout.partitions, "200 devices spread over every partition"
    with engine.connect() as conn:
        left = conn.execute(select(event_log.EVENTS.c.id).where(~event_log.EVENTS.c.streamed))
        assert left.all() == []


async def test_streams_are_bounded(engine: Engine, redis_url: str, redis_prefix: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    s = EventStreams(client, StreamLayout(redis_prefix, 1), 100, "c")
    try:
        await blocking(record, engine, [visit("one-device", i) for i in range(1000)])
        while await s.relay(engine, blocking, limit=100):
            pass
        length = await client.xlen(s.layout.events_key(0))
        assert 100 <= length < 300, "XADD MAXLEN ~ 100 (trimmed by whole nodes)"
        # The inbox import's XADDs too.
        await client.delete(s.layout.events_key(0))
        await s.import_inbox(engine, blocking)
        batch = [visit("one-device", 2000 + i) for i in range(1000)]
        for i in range(0, 1000, 50):
            await state_step_with_events(client, s.layout, "one-device", batch[i : i + 50])
        assert await s.import_inbox(engine, blocking, limit=1000) == 1000
        length = await client.xlen(s.layout.events_key(0))
        assert 100 <= length < 300, "imported: XADD MAXLEN ~ 100 as well"
    finally:
        await s.close()


async def test_a_crash_between_xadd_and_commit_repeats_entries_under_the_same_id(
    engine: Engine, streams: EventStreams, monkeypatch: pytest.MonkeyPatch
) -> None:
    events = [visit(f"d-{i}", i) for i in range(10)]
    await blocking(record, engine, events)
    real = streams_mod._mark_streamed

    def crash(*args: Any) -> None:
        raise RuntimeError("killed after XADD, before the commit")

    monkeypatch.setattr(streams_mod, "_mark_streamed", crash)
    with pytest.raises(RuntimeError):
        await streams.relay(engine, blocking)
    monkeypatch.setattr(streams_mod, "_mark_streamed", real)
    assert await streams.relay(engine, blocking) == 10, "nothing was marked: relayed again"
    got = await consume(streams.client, streams.layout.events_keys())
    counts = Counter(e.id for _, e in got)
    assert set(counts) == {e.id for e in events} and set(counts.values()) == {2}


async def state_step_with_events(
    client: Any, layout: StreamLayout, device: str, events: list[Event]
) -> None:
    """A minimal device-state script: stores a step and XADDs its visit events in one
    script, as ``service.state.redis_store`` does (the inbox shares the partition's hash tag;
    the service's own script is tested end to end in test_events_wiring.py)."""
    n = layout.partition(device)
    state_key = f"{layout.prefix}:{layout.tag(n)}:d:{device}:state"
    script = (
        INBOX_XADD_LUA + "redis.call('SET', KEYS[1], ARGV[1])\nadd_events(KEYS[2], 2)\nreturn 1"
    )
    await client.eval(script, 2, state_key, layout.inbox_key(n), b"new-state", *inbox_args(events))


async def test_inbox_entries_enter_the_log_once_even_when_an_import_dies(
    engine: Engine, streams: EventStreams, monkeypatch: pytest.MonkeyPatch
) -> None:
    layout = streams.layout
    batches = {f"dev-{i}": [visit(f"dev-{i}", 10 * i + k) for k in range(3)] for i in range(6)}
    # The import group is created when an inbox first exists; nothing before is missed.
    assert await streams.import_inbox(engine, blocking) == 0
    for device, events in batches.items():
        await state_step_with_events(streams.client, layout, device, events)
    every = [e for events in batches.values() for e in events]

    # An import that dies after its transaction, before the XACK.
    async def die(*args: Any) -> None:
        raise ConnectionError("killed before XACK")

    monkeypatch.setattr(streams, "_acknowledge", die)
    with pytest.raises(ConnectionError):
        await streams.import_inbox(engine, blocking)
    monkeypatch.undo()

    # Another process takes the entries over once they have been idle long enough.
    other = EventStreams(streams.client, layout, 1000, "other-consumer", claim_idle_ms=0)
    await other.import_inbox(engine, blocking, reclaim=True)
    await streams.import_inbox(engine, blocking)  # its own unacknowledged ones: no-ops now
    await streams.import_inbox(engine, blocking, reclaim=True)
    for n in range(layout.partitions):
        assert await streams.client.xlen(layout.inbox_key(n)) == 0, "drained"
    with engine.connect() as conn:
        rows = conn.execute(select(event_log.EVENTS)).all()
    assert sorted(r.id for r in rows) == sorted(e.id for e in every), "each once in the log"
    assert {r.id: event_log.row_event(r) for r in rows} == {e.id: e for e in every}
    # And then out to the public streams like any other event.
    while await streams.relay(engine, blocking):
        pass
    got = await consume(streams.client, layout.events_keys())
    assert Counter(e.id for _, e in got) == Counter(e.id for e in every)


async def test_imported_events_are_streamed_by_the_import_once_under_their_ids(
    engine: Engine, streams: EventStreams
) -> None:
    """The import XADDs each new inbox event to its partition's public stream and records it
    already streamed: the stream relay has nothing left to do, and an event the log already
    has is neither streamed nor recorded again."""
    layout = streams.layout
    events = {f"dev-{i}": [visit(f"dev-{i}", 10 * i + k) for k in range(2)] for i in range(5)}
    await streams.import_inbox(engine, blocking)
    for device, batch in events.items():
        await state_step_with_events(streams.client, layout, device, batch)
    known = events["dev-0"][0]
    record(engine, [known])  # recorded before, by another path
    assert await streams.import_inbox(engine, blocking) == 10
    assert await streams.relay(engine, blocking) == 1, "only the one recorded elsewhere"
    got = await consume(streams.client, layout.events_keys())
    assert Counter(e.id for _, e in got) == Counter(e.id for b in events.values() for e in b)
    for key, event in got:
        assert event == next(e for b in events.values() for e in b if e.id == event.id)
        assert key == layout.events_key(layout.partition(event.data["device_id"]))
    with engine.connect() as conn:
        rows = conn.execute(select(event_log.EVENTS)).all()
    assert len(rows) == 10 and all(r.streamed for r in rows)


async def test_a_crash_between_the_import_xadd_and_its_commit_reimports_the_same_ids(
    engine: Engine, streams: EventStreams, monkeypatch: pytest.MonkeyPatch
) -> None:
    layout = streams.layout
    await streams.import_inbox(engine, blocking)
    batch = [visit("dev-1", k) for k in range(4)]
    await state_step_with_events(streams.client, layout, "dev-1", batch)
    real = Connection.commit

    def crash(self: Connection) -> None:
        raise RuntimeError("killed after XADD, before the commit")

    monkeypatch.setattr(Connection, "commit", crash)
    with pytest.raises(RuntimeError):
        await streams.import_inbox(engine, blocking)
    monkeypatch.setattr(Connection, "commit", real)
    with engine.connect() as conn:
        assert conn.execute(select(event_log.EVENTS)).all() == [], "nothing committed"
    assert await streams.import_inbox(engine, blocking) == 4, "read again, imported"
    assert await streams.client.xlen(layout.inbox_key(layout.partition("dev-1"))) == 0
    got = await consume(streams.client, layout.events_keys())
    assert Counter(e.id for _, e in got) == Counter({e.id: 2 for e in batch})
    assert await streams.relay(engine, blocking) == 0


async def test_an_entry_the_log_refuses_holds_up_only_its_own_partition(
    engine: Engine, streams: EventStreams
) -> None:
    layout = streams.layout
    good = visit("dev-good", 1)
    bad_device = next(
        d
        for d in (f"dev-{i}" for i in range(100))
        if layout.partition(d) != layout.partition("dev-good")
    )
    bad = visit_event(
        "enter", device_id=bad_device, user_id=None, store_id="s" * 200, ping_key="p",
        occurred_at=datetime.now(UTC),
    )  # fmt: skip
    await streams.import_inbox(engine, blocking)
    await state_step_with_events(streams.client, layout, bad_device, [bad])
    await state_step_with_events(streams.client, layout, "dev-good", [good])
    for _ in range(2):
        with pytest.raises(DataError):
            await streams.import_inbox(engine, blocking)
    with engine.connect() as conn:
        assert [r.id for r in conn.execute(select(event_log.EVENTS))] == [good.id]
    got = await consume(streams.client, layout.events_keys())
    assert [e.id for _, e in got] == [good.id]
    assert await streams.client.xlen(layout.inbox_key(layout.partition(bad_device))) == 1


async def test_the_import_fans_out_its_new_events_by_type_and_store_tag(
    engine: Engine, streams: EventStreams
) -> None:
    """Imported events get their webhook deliveries in the import's transaction, as the
    fan-out would make them, once: the fan-out then has nothing left, and a repeated
    import makes none."""
    now = datetime.now(UTC)

    def endpoint(id_: str, types: list[str] | None, tags: list[str] | None, on: bool) -> None:
        with engine.begin() as conn:
            webhooks_repo.insert_endpoint(conn, {
                "id": id_, "url": "https://example.com/h", "event_types": types,
                "store_tags": tags, "secret": "whsec_x", "enabled": on, "created_at": now,
                "updated_at": now,
            })  # fmt: skip

    endpoint("all", None, None, True)
    endpoint("exits", ["visit.exited"], None, True)
    endpoint("uptown", None, ["uptown"], True)
    endpoint("off", None, None, False)
    enter = visit("dev-1", 1)
    exit_ = visit_event(
        "exit", device_id="dev-1", user_id=None, store_id="s-2", ping_key="p-2",
        occurred_at=now, store_tags=["uptown"],
    )  # fmt: skip
    woken: list[dict[str, int]] = []
    await streams.import_inbox(engine, blocking)
    await state_step_with_events(streams.client, streams.layout, "dev-1", [enter, exit_])
    assert await streams.import_inbox(engine, blocking, wake=lambda m: woken.append(dict(m))) == 2
    assert woken == [{"all": 2, "exits": 1, "uptown": 1}]
    await state_step_with_events(streams.client, streams.layout, "dev-1", [enter])  # again
    assert await streams.import_inbox(engine, blocking, wake=woken.append) == 1
    assert len(woken) == 1, "nothing new to deliver"
    with engine.begin() as conn:
        assert webhooks_repo.fan_out(conn, now, 100) == ([], {})
        got = conn.execute(
            select(webhooks_repo.DELIVERIES.c.endpoint_id, webhooks_repo.DELIVERIES.c.event_id)
        ).all()
        assert all(r.fanned_out for r in conn.execute(select(event_log.EVENTS)))
    assert sorted(got) == sorted(
        [("all", enter.id), ("all", exit_.id), ("exits", exit_.id), ("uptown", exit_.id)]
    )


async def test_the_import_streams_erased_users_events_redacted_and_no_denied_ones(
    engine: Engine, streams: EventStreams
) -> None:
    from service.users import repository as users_repo

    now = datetime.now(UTC)
    with engine.begin() as conn:
        users_repo.record_erasure(conn, "u-1", [], now + timedelta(minutes=1), now)
        users_repo.merge_attributes(conn, "u-7", {"location_consent": False})

    def of(user: str) -> Event:
        return visit_event(
            "enter", device_id=f"dev-{user}", user_id=user, store_id="s-1", ping_key="p",
            occurred_at=now,
        )  # fmt: skip

    erased, denied, kept = of("u-1"), of("u-7"), of("u-9")
    await streams.import_inbox(engine, blocking)
    for e in (erased, denied, kept):
        await state_step_with_events(streams.client, streams.layout, e.data["device_id"], [e])
    assert await streams.import_inbox(engine, blocking) == 3
    got = {e.id: e for _, e in await consume(streams.client, streams.layout.events_keys())}
    assert set(got) == {erased.id, kept.id} and got[kept.id] == kept
    assert got[erased.id].data["user_id"] is None and got[erased.id].data["device_id"] is None
    assert got[erased.id].data["store_id"] == "s-1"


async def test_cluster_spreads_partitions_over_nodes(engine: Engine, cluster_url: str) -> None:
    client = RedisCluster.from_url(cluster_url)
    prefix = f"geotest-{uuid.uuid4().hex[:8]}"
    s = EventStreams(client, StreamLayout(prefix, 16), 1000, "c")
    try:
        events = [visit(f"dev-{i}", i) for i in range(64)]
        await blocking(record, engine, events)
        assert await s.relay(engine, blocking) == 64
        nodes = {client.get_node_from_key(k).name for k in s.layout.events_keys()}
        assert len(nodes) == 3, "16 partitions land on all 3 nodes"
        assert len({key_slot(k.encode()) for k in s.layout.events_keys()}) == 16
        got = await consume(client, s.layout.events_keys())
        assert sorted(e.id for _, e in got) == sorted(e.id for e in events)
        # The inbox too (a partition's two streams share a slot for the state script).
        for k in s.layout.events_keys():
            n = int(k.split("{ev:")[1].split("}")[0])
            assert key_slot(k.encode()) == key_slot(s.layout.inbox_key(n).encode())
        await state_step_with_events(client, s.layout, "dev-x", [visit("dev-x", 999)])
        assert await s.import_inbox(engine, blocking) == 1
        assert await s.import_inbox(engine, blocking) == 0
    finally:
        await client.aclose()


def test_the_service_relays_redemptions_to_the_stream(api: Api, redis_url: str) -> None:
    """Through the running app: a redeemed offer reaches the stream on its own."""
    event = visit("app-device")
    with api.app_state.engine.begin() as conn:
        event_log.record(conn, [event])
    layout = StreamLayout(api.settings.redis_prefix, api.settings.stream_partitions)
    key = layout.events_key(layout.partition("app-device"))
    client = redis.Redis.from_url(redis_url)
    deadline = time.monotonic() + 10
    while not client.xlen(key):
        assert time.monotonic() < deadline, "the relay never added the event"
        time.sleep(0.1)
    # The README's consumer, as written there.
    client.xgroup_create(key, "crm", id="0")
    for _stream, entries in client.xreadgroup("crm", "worker-1", {key: ">"}, count=100):
        for entry_id, fields in entries:
            assert fields[b"id"].decode() == event.id
            assert entry_event(fields) == event
            client.xack(key, "crm", entry_id)
    client.close()
