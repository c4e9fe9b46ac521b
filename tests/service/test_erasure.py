"""Erasure survives a replica killed halfway, and replicas share pending erasures safely."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from unittest.mock import ANY

import pytest
import redis
from sqlalchemy import Engine, select

from service.caps.redis_caps import RedisCapStore
from service.db.engine import make_engine
from service.events import log as event_log
from service.events.types import EventType
from service.settings import Settings
from service.state.redis_store import RedisStateStore
from service.trust import RedisTrustStore
from service.users import repository as repo
from service.users.erasure import Eraser
from tests.service.conftest import Api, _make_api


@pytest.fixture
def api(pg_settings: Settings) -> Iterator[Api]:
    """The app on PostGIS + Redis, its own erasure poller out of the way (these tests play
    the other replicas)."""
    yield from _make_api(pg_settings.model_copy(update={"erasure_retry_s": 3600.0}))


def _stores(settings: Settings) -> tuple[RedisStateStore, RedisCapStore, RedisTrustStore]:
    assert settings.redis_url
    state = RedisStateStore.from_url(settings.redis_url, settings.redis_prefix, 3600, 3600)
    caps = RedisCapStore.from_url(settings.redis_url, settings.redis_prefix)
    trust = RedisTrustStore.from_url(settings.redis_url, settings.redis_prefix)
    return state, caps, trust


def _keys(settings: Settings, needle: str) -> list[str]:
    assert settings.redis_url
    with redis.Redis.from_url(settings.redis_url) as rc:
        found = rc.scan_iter(match=f"{settings.redis_prefix}*")
        return [k.decode() for k in found if needle in k.decode()]


def test_an_erasure_killed_after_its_database_part_is_finished_by_another_replica(
    api: Api,
) -> None:
    c = api.client
    c.patch("/v1/users/kim", json={"first_name": "Kim"}, headers=api.server)
    body = {"device_id": "kim-phone", "user_id": "kim", "lat": 1.0, "lng": 1.0,
            "accuracy_m": 5, "timestamp": datetime.now(UTC).isoformat()}  # fmt: skip
    assert c.post("/v1/locations", json=body, headers=api.sdk).status_code == 200
    assert _keys(api.settings, "kim-phone"), "the device has state in Redis"

    async def scenario() -> None:
        engine: Engine = make_engine(api.settings)
        state, caps, trust = _stores(api.settings)
        try:
            # Replica A: the database part commits, then A is SIGKILLed (no Redis step ran).
            dying = Eraser(engine, state, caps, trust, lease_s=0.5)
            await asyncio.to_thread(dying._begin, "kim")
            # Replica B: the lease keeps it off A's erasure while A might still be at work...
            other = Eraser(engine, state, caps, trust, lease_s=30)
            assert await other.resume() == 0
            assert _keys(api.settings, "kim-phone")
            assert await asyncio.to_thread(other.pending) == 1
            # ...and once the lease has run out, B finishes it: every step is idempotent.
            time.sleep(0.6)
            assert await other.resume() == 1
            assert await asyncio.to_thread(other.pending) == 0
        finally:
            await state.close()
            await caps.close()
            await trust.close()
            engine.dispose()

    asyncio.run(scenario())
    assert not _keys(api.settings, "kim-phone") and not _keys(api.settings, "u:kim}")
    status = c.get("/v1/users/kim/erasure", headers=api.admin).json()
    assert status["status"] == "done" and status["attempts"] == 2
    # user.erased: recorded with the database part, once for the killed and resumed erasure.
    first = erased_events(api)
    assert len(first) == 1 and first[0].data == {"user_id": "kim", "erasure_id": ANY}
    # Kim comes back and is erased again: a new erasure, a new event.
    c.patch("/v1/users/kim", json={"first_name": "Kim"}, headers=api.server)
    assert c.delete("/v1/users/kim", headers=api.admin).status_code == 204
    assert c.delete("/v1/users/kim", headers=api.admin).status_code == 404, "nothing held"
    again = erased_events(api)
    assert len(again) == 2 and again[0].id == first[0].id and again[1].id != first[0].id


def erased_events(api: Api) -> list[Any]:
    t = event_log.EVENTS
    with api.app_state.engine.connect() as conn:
        return conn.execute(
            select(t).where(t.c.type == EventType.user_erased.value).order_by(t.c.seq)
        ).all()


def test_replicas_claiming_at_once_take_different_erasures(api: Api) -> None:
    engine: Engine = api.app_state.engine
    now = datetime.now(UTC)
    with engine.begin() as conn:
        for user in ("u-1", "u-2"):
            repo.record_erasure(conn, user, [], now, now - timedelta(seconds=1))  # lease ran out
    later = now + timedelta(seconds=60)
    with engine.begin() as first, engine.begin() as second:
        a = repo.claim_erasure(first, now, later)
        b = repo.claim_erasure(second, now, later)  # SKIP LOCKED: not the row `first` holds
        assert a is not None and b is not None and {a[1], b[1]} == {"u-1", "u-2"}
    with engine.begin() as third:
        assert repo.claim_erasure(third, now, later) is None, "both are leased now"


def test_a_done_erasure_stays_readable_after_a_repeated_delete(api: Api) -> None:
    c, admin = api.client, api.admin
    assert c.patch("/v1/users/lee", json={"a": 1}, headers=api.server).status_code == 200
    assert c.get("/v1/users/lee/erasure", headers=admin).status_code == 404
    assert c.delete("/v1/users/lee", headers=admin).status_code == 204
    first = c.get("/v1/users/lee/erasure", headers=admin).json()
    assert first["status"] == "done" and first["attempts"] == 1
    assert c.delete("/v1/users/lee", headers=admin).status_code == 404  # nothing held now
    assert c.get("/v1/users/lee/erasure", headers=admin).json() == first
    with api.app_state.engine.connect() as conn:
        stored = conn.execute(repo.ERASURES.select()).mappings().one()
    assert stored["user_id"] is None and stored["devices"] == [], "no raw id once done"
    assert stored["user_hash"] == repo.user_hash("lee")
