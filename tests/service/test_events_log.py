"""The event log: stable ids, the envelope, recording in a caller's transaction (SQLAlchemy
and an async psycopg batch), redaction on erasure, retention."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import Engine, select, text

from service.db.engine import make_engine
from service.db.migrate import upgrade
from service.events import log as event_log
from service.events.types import (
    EventType,
    offer_held_out,
    offer_issued,
    offer_redeemed,
    user_erased,
    visit_event,
    visit_events,
)
from service.settings import Settings
from service.webhooks import repository as wrepo

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def visit(kind: str = "enter", ping: str = "p-1", device: str = "dev-1", user: str | None = "u-1"):
    return visit_event(
        kind, device_id=device, user_id=user, store_id="s-1", ping_key=ping,
        occurred_at=T0, store_tags=["downtown", "cafe", "downtown"],
    )  # fmt: skip


def issued(offer_id: str = "o-1", device: str = "dev-1", user: str | None = "u-1"):
    return offer_issued(
        offer_id=offer_id, campaign_id="c-1", store_id="s-1", device_id=device, user_id=user,
        ping_key="p-1", channel="push", coupon_code="LATTE-X", title="t", message="m",
        value=20.0, issued_at=T0, expires_at=T0 + timedelta(hours=2), store_tags=["downtown"],
    )  # fmt: skip


def all_types() -> list:
    return [
        visit("enter"),
        visit("dwell"),
        visit("exit"),
        issued(),
        offer_held_out(
            campaign_id="c-1",
            store_id="s-1",
            device_id="dev-1",
            user_id="u-1",
            ping_key="p-2",
            occurred_at=T0,
        ),
        offer_redeemed(
            offer_id="o-1",
            campaign_id="c-1",
            coupon_code="LATTE-X",
            store_id="s-1",
            device_id="dev-1",
            user_id="u-1",
            amount=4.5,
            redeemed_store_id="s-2",
            redeemed_at=T0,
        ),
        user_erased(user_id="u-1", erasure_id="er-1", occurred_at=T0),
    ]


def test_ids_are_stable_per_source_and_distinct_across_sources() -> None:
    assert visit().id == visit().id, "a retried ping's step makes the same id"
    assert visit("enter").id != visit("exit").id
    assert visit(ping="p-1").id != visit(ping="p-2").id
    assert visit(device="a").id != visit(device="b").id
    assert issued("o-1").id == issued("o-1").id != issued("o-2").id
    events = all_types()
    assert len({e.id for e in events}) == len(events)
    assert {e.type for e in events} == set(EventType)
    # Parts cannot run into each other: ("ab", "c") is not ("a", "bc").
    a = visit_event(
        "enter", device_id="ab", user_id=None, store_id="s", ping_key="c", occurred_at=T0
    )
    b = visit_event(
        "enter", device_id="a", user_id=None, store_id="s", ping_key="bc", occurred_at=T0
    )
    assert a.id != b.id


def test_envelope_has_the_four_fields_and_no_coordinates() -> None:
    for e in all_types():
        env = e.envelope()
        assert list(env) == ["id", "type", "occurred_at", "data"]
        assert env["occurred_at"] == "2026-11-30T12:00:00Z"
        assert env["id"].startswith("evt_") and env["type"] == e.type.value
        assert not {"lat", "lng", "latitude", "longitude", "location"} & set(env["data"])
    assert visit().store_tags == ("cafe", "downtown"), "tags kept once, sorted"
    assert visit().partition_key == "dev-1"
    assert all_types()[-1].partition_key == "u-1", "no device: partitioned by user"
    with pytest.raises(ValueError):
        visit_event("enter", device_id="d", user_id=None, store_id="s", ping_key="p",
                    occurred_at=datetime(2026, 1, 1))  # fmt: skip


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(Settings(data_dir=tmp_path, database_url=None))
    upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def pg_engine(pg_settings: Settings) -> Iterator[Engine]:
    engine = make_engine(pg_settings)
    yield engine
    engine.dispose()


@pytest.fixture(params=["postgis", "sqlite"])
def engine(request: pytest.FixtureRequest) -> Engine:
    name = "pg_engine" if request.param == "postgis" else "sqlite_engine"
    return request.getfixturevalue(name)


def stored(engine: Engine) -> list:
    with engine.connect() as conn:
        return conn.execute(select(event_log.EVENTS).order_by(event_log.EVENTS.c.seq)).all()


def test_record_in_the_callers_transaction_once_per_id(engine: Engine) -> None:
    events = all_types()
    with engine.begin() as conn:
        event_log.record(conn, [*events, visit()])  # a repeat inside one batch
    with engine.begin() as conn:
        event_log.record(conn, events)  # a retried source: nothing new
    rows = stored(engine)
    assert [r.id for r in rows] == [e.id for e in events]
    first = rows[0]
    assert first.type == "visit.entered" and first.store_id == "s-1"
    assert first.store_tags == ["cafe", "downtown"] and first.user_id == "u-1"
    assert first.partition_key == "dev-1" and not first.fanned_out and not first.streamed
    assert event_log.row_event(first) == events[0]
    # Rolled back with the caller: nothing recorded.
    with pytest.raises(RuntimeError), engine.begin() as conn:
        event_log.record(conn, [visit(ping="rolled-back")])
        raise RuntimeError("the change it describes failed")
    assert len(stored(engine)) == len(events)


def test_record_new_records_the_same_rows_and_tells_which_are_new(engine: Engine) -> None:
    events = all_types()
    with engine.begin() as conn:
        event_log.record(conn, events[:2])
    with engine.begin() as conn:
        new = event_log.record_new(conn, [*events, visit()], streamed=True, fanned_out=True)
    rows = stored(engine)
    assert new == {r.id: r.seq for r in rows[2:]} and len(new) == len(events) - 2
    assert [event_log.row_event(r) for r in rows] == events
    assert all(r.streamed and r.fanned_out for r in rows[2:])
    assert [r.store_tags for r in rows] == [list(e.store_tags) for e in events]
    assert [(r.user_id, r.partition_key, r.store_id) for r in rows] == [
        (e.data.get("user_id"), e.partition_key, e.store_id) for e in events
    ]
    with engine.begin() as conn:
        assert event_log.record_new(conn, events) == {}, "all there: nothing new"


def test_async_psycopg_batch_records_the_same_rows(
    pg_settings: Settings, pg_engine: Engine
) -> None:
    events = all_types()
    sql, params = event_log.insert_sql([*events, issued()])
    assert sql.count("%s") == len(params) == len(events) * len(event_log.COLUMNS)
    assert event_log.insert_sql([]) == ("", [])

    async def batch() -> None:
        url = pg_settings.database_url
        assert url is not None
        async with await psycopg.AsyncConnection.connect(url) as conn:
            async with conn.transaction():
                await conn.execute("SELECT 1")  # the batch's own writes would go here
                await conn.execute(sql, params)
            async with conn.transaction():
                await conn.execute(sql, params)  # retried: nothing new

    asyncio.run(batch())
    with pg_engine.begin() as conn:
        event_log.record(conn, events)  # and through SQLAlchemy: nothing new either
    rows = stored(pg_engine)
    assert [event_log.row_event(r) for r in rows] == events


def test_store_tags_and_redaction(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO geofences (store_id, name, kind, lat, lng, radius_m, location, tags,"
                " timezone, extra, content_hash) VALUES ('s-1', 'S', 'circle', 1, 2, 50,"
                " :loc, :tags, 'UTC', :extra, 'h')"
            ),
            {
                "loc": "SRID=4326;POINT(2 1)",
                "tags": '["downtown"]',
                "extra": "{}",
            },
        )
        assert event_log.store_tags(conn, "s-1") == ["downtown"]
        assert event_log.store_tags(conn, "gone") == []
        other = visit(device="dev-9", user="u-9", ping="p-9")
        event_log.record(conn, [*all_types(), visit(device="dev-2", user=None, ping="p-3"), other])
    with engine.begin() as conn:
        changed = event_log.redact_user(conn, "u-1", ["dev-2"])
    rows = {r.id: r for r in stored(engine)}
    assert changed == 7, "6 events of u-1 (not user.erased) and one of its other device"
    for r in rows.values():
        if r.id == other.id:
            assert r.data["user_id"] == "u-9" and r.data["device_id"] == "dev-9"
        elif r.type == "user.erased":
            assert r.data["user_id"] == "u-1", "the erasure event names whom to erase"
        else:
            assert r.data["user_id"] is None and r.data["device_id"] is None
            assert r.data.get("ping_id") is None and r.user_id is None and r.partition_key == ""
            assert r.data["store_id"] == "s-1", "what is not personal stays"


def test_prune_keeps_what_is_not_fully_handled(engine: Engine) -> None:
    events = [visit(ping=f"p-{i}") for i in range(4)]
    with engine.begin() as conn:
        event_log.record(conn, events)
    t = event_log.EVENTS
    rows = stored(engine)
    seq = {r.id: r.seq for r in rows}
    now = datetime.now(UTC)
    later = now + timedelta(days=1)
    with engine.begin() as conn:
        # 0: fully handled; 1: not streamed; 2: not fanned out; 3: a pending delivery
        conn.execute(t.update().values(fanned_out=True, streamed=True))
        conn.execute(t.update().where(t.c.id == events[1].id).values(streamed=False))
        conn.execute(t.update().where(t.c.id == events[2].id).values(fanned_out=False))
        conn.execute(
            wrepo.DELIVERIES.insert(),
            [
                {"endpoint_id": "wh_1", "event_seq": seq[events[3].id], "event_id": events[3].id,
                 "status": "pending", "attempts": 0, "replay": False, "created_at": now,
                 "next_attempt_at": now},
                {"endpoint_id": "wh_1", "event_seq": seq[events[0].id], "event_id": events[0].id,
                 "status": "delivered", "attempts": 1, "replay": False, "created_at": now,
                 "next_attempt_at": now},
            ],
        )  # fmt: skip
    with engine.begin() as conn:
        assert event_log.prune(conn, now - timedelta(days=1), streams=True) == 0, "too recent"
    with engine.begin() as conn:
        assert event_log.prune(conn, later, streams=True) == 1
    assert {r.id for r in stored(engine)} == {e.id for e in events[1:]}
    with engine.connect() as conn:
        left = conn.execute(select(wrepo.DELIVERIES.c.status)).scalars().all()
    assert left == ["pending"], "finished deliveries pruned, the pending one kept"
    with engine.begin() as conn:
        assert event_log.prune(conn, later, streams=False) == 1, "no streams: streamed moot"
    assert {r.id for r in stored(engine)} == {events[2].id, events[3].id}


def test_erasure_and_visit_helpers(engine: Engine) -> None:
    from geofences.visits import VisitEvent

    steps = [VisitEvent("enter", "s-1"), VisitEvent("dwell", "s-2", dwell_s=300.0)]
    made = visit_events(
        steps, device_id="dev-1", user_id="u-1", ping_key="p-7", occurred_at=T0,
        tags_of={"s-1": ["a"], "s-2": ["b"]}.__getitem__,
    )  # fmt: skip
    assert [e.type.value for e in made] == ["visit.entered", "visit.dwelled"]
    assert made[0] == visit_event("enter", device_id="dev-1", user_id="u-1", store_id="s-1",
                                  ping_key="p-7", occurred_at=T0, store_tags=["a"])  # fmt: skip
    assert made[1].data["dwell_s"] == 300.0 and made[1].store_tags == ("b",)
    with engine.begin() as conn:
        event_log.record(conn, made)
        erased = event_log.record_user_erased(
            conn, user_id="u-1", erasure_id="er-9", device_ids=["dev-1"], at=T0
        )
        again = event_log.record_user_erased(
            conn, user_id="u-1", erasure_id="er-9", device_ids=["dev-1"], at=T0
        )
    assert erased == again
    rows = stored(engine)
    assert [r.type for r in rows] == ["visit.entered", "visit.dwelled", "user.erased"]
    assert rows[0].data["user_id"] is None and rows[2].data == {
        "user_id": "u-1",
        "erasure_id": "er-9",
    }


def test_events_arriving_after_their_users_erasure_are_recorded_redacted(engine: Engine) -> None:
    """A visit event still in an inbox when its user is erased enters the log redacted; one
    whose user has withdrawn consent meanwhile does not enter it."""
    from service.users import repository as users_repo

    with engine.begin() as conn:
        users_repo.record_erasure(conn, "u-1", [], T0 + timedelta(minutes=1), T0)
        users_repo.merge_attributes(conn, "u-7", {"location_consent": False})
        users_repo.merge_attributes(conn, "u-9", {"location_consent": True})
    late_ping = visit_event(
        "enter", device_id="dev-1", user_id="u-1", store_id="s-1", ping_key="p-later",
        occurred_at=T0 + timedelta(minutes=2),
    )  # fmt: skip
    before, other = visit(), visit(device="dev-9", user="u-9", ping="p-9")
    denied = visit(device="dev-7", user="u-7", ping="p-7")
    with engine.begin() as conn:
        assert event_log.record_arrived(conn, [before, late_ping, other, denied]) == 1
    rows = {r.id: r for r in stored(engine)}
    assert set(rows) == {before.id, late_ping.id, other.id}
    gone = rows[before.id]
    assert gone.data["user_id"] is None and gone.data["device_id"] is None
    assert gone.user_id is None and gone.partition_key == "" and gone.data["store_id"] == "s-1"
    assert rows[late_ping.id].data["user_id"] == "u-1", "a ping after the erasure is kept"
    assert rows[other.id].data["user_id"] == "u-9"


def test_the_local_inbox_keeps_what_it_could_not_write_and_writes_it_later(
    tmp_path: Path,
) -> None:
    """The embedded default's inbox: a failed write keeps the events queued (in order) and
    the task retries; stopping writes what is left."""
    from service.events.inbox import LocalInbox

    engine = make_engine(Settings(data_dir=tmp_path, database_url=None))  # no tables yet

    async def scenario() -> None:
        inbox = LocalInbox(engine, retry_s=0.05)
        first = [visit(ping=f"p-{i}") for i in range(3)]
        inbox.add(first)
        with pytest.raises(Exception, match="no such table"):
            await inbox.flush()
        assert len(inbox) == 3, "kept for the next try"
        inbox.start()
        await asyncio.sleep(0.2)  # the task retries and fails again meanwhile
        assert len(inbox) == 3
        await asyncio.to_thread(upgrade, engine)
        inbox.add([visit(ping="p-3"), first[0]])  # a repeat of an id: recorded once
        for _ in range(100):
            if not len(inbox):
                break
            await asyncio.sleep(0.05)
        assert len(inbox) == 0
        inbox.add([visit(ping="p-4")])
        await inbox.stop()  # writes what is left

    asyncio.run(scenario())
    rows = stored(engine)
    assert [r.data["ping_id"] for r in rows] == ["p-0", "p-1", "p-2", "p-3", "p-4"]
    engine.dispose()


def test_the_local_inbox_at_stop_writes_what_was_queued_during_its_last_write(
    sqlite_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    from service.events import inbox as inbox_mod

    real = inbox_mod._record

    def slow(engine: Engine, events: list) -> None:
        time.sleep(0.2)
        real(engine, events)

    monkeypatch.setattr(inbox_mod, "_record", slow)

    async def scenario() -> None:
        inbox = inbox_mod.LocalInbox(sqlite_engine)
        inbox.start()
        inbox.add([visit(ping="p-a")])
        await asyncio.sleep(0.05)  # its write is under way
        inbox.add([visit(ping="p-b")])
        await inbox.stop()

    asyncio.run(scenario())
    assert [r.data["ping_id"] for r in stored(sqlite_engine)] == ["p-a", "p-b"]
