"""Pings that match no fence are stored in one round trip on any replica (the state store's
idle path), and never at the cost of a missed exit, an out-of-order ping or a consent check.

Two apps on the same PostGIS and Redis stand for two replicas: each has its own Redis
clients and its own cache of device states, as two processes would.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import orjson
import pytest
import redis

from service.settings import Settings
from tests.helpers import ago, device_key, iso
from tests.service.conftest import Api, _make_api

CENTER = (40.74172, -73.98964)
FAR = (40.70, -74.05)  # kilometres from every fence below
CSV = b"store_id,name,lat,lng,radius_m\ns-001,Flatiron,40.74172,-73.98964,45.72\n"


class Replica:
    """One app, with a count of the state store's round trips."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self.calls = 0
        store = api.app_state.state_store
        call = store._call

        async def counting(*args: Any) -> Any:
            self.calls += 1
            return await call(*args)

        store._call = counting

    def ping(
        self, lat: float, lng: float, ts: datetime, device: str = "dev-1", **extra: Any
    ) -> dict[str, Any]:
        body = {"device_id": device, "lat": lat, "lng": lng, "accuracy_m": 5.0}
        body.update(timestamp=iso(ts), **extra)
        self.calls = 0
        r = self.api.client.post("/v1/locations", json=body, headers=self.api.sdk)
        assert r.status_code == 200, r.text
        return r.json()


@pytest.fixture
def replicas(pg_settings: Settings) -> Iterator[tuple[Replica, Replica]]:
    with contextlib.ExitStack() as stack:
        a = stack.enter_context(contextlib.contextmanager(_make_api)(pg_settings))
        r = a.client.post("/v1/geofences/import", files={"file": ("s.csv", CSV)}, headers=a.admin)
        assert r.status_code == 200, r.text
        b = stack.enter_context(contextlib.contextmanager(_make_api)(pg_settings))
        yield Replica(a), Replica(b)


def kinds(answer: dict[str, Any]) -> list[tuple[str, str]]:
    return [(e["type"], e["store_id"]) for e in answer["events"]]


def test_a_ping_far_from_fences_takes_one_round_trip_on_any_replica(
    replicas: tuple[Replica, Replica],
) -> None:
    a, b = replicas
    assert a.ping(*FAR, ago(60))["reason"] == "no_trigger" and a.calls == 1
    # b never saw the device, and a's copy of its state is behind after b's ping.
    assert b.ping(*FAR, ago(50))["reason"] == "no_trigger" and b.calls == 1
    assert a.ping(*FAR, ago(40))["reason"] == "no_trigger" and a.calls == 1
    low = a.ping(*CENTER, ago(30), accuracy_m=5000.0)
    assert low["reason"] == "low_accuracy" and a.calls == 1


def test_an_exit_seen_by_another_replica_is_not_skipped(replicas: tuple[Replica, Replica]) -> None:
    a, b = replicas
    assert kinds(a.ping(*CENTER, ago(70))) == [("enter", "s-001")]
    # The replica that saw the visit steps from its copy at once.
    assert kinds(a.ping(*FAR, ago(65))) == [("exit", "s-001")] and a.calls == 1
    assert kinds(a.ping(*CENTER, ago(60))) == [("enter", "s-001")]
    away = b.ping(*FAR, ago(50))
    assert kinds(away) == [("exit", "s-001")]
    assert b.calls == 2  # the state was not idle: it came back, and the step ran on it
    # Inside again through b, then an inaccurate ping through a: no exit, the visit stays.
    assert kinds(b.ping(*CENTER, ago(40))) == [("enter", "s-001")]
    assert a.ping(*FAR, ago(30), accuracy_m=5000.0)["reason"] == "low_accuracy"
    assert a.ping(*CENTER, ago(20))["events"] == []  # still the same visit


def test_an_out_of_order_ping_is_caught_on_the_idle_path(
    replicas: tuple[Replica, Replica],
) -> None:
    a, b = replicas
    assert a.ping(*FAR, ago(30))["reason"] == "no_trigger"
    assert b.ping(*FAR, ago(60))["reason"] == "out_of_order"
    assert b.ping(*FAR, ago(30))["reason"] == "no_trigger"  # the same second is in order


def test_the_first_idle_ping_of_a_device_checks_its_users_consent(
    replicas: tuple[Replica, Replica],
) -> None:
    a, b = replicas
    r = a.api.client.patch(
        "/v1/users/private", json={"location_consent": False}, headers=a.api.server
    )
    assert r.status_code == 200, r.text
    assert b.ping(*FAR, ago(30), device="phone-9", user_id="private")["reason"] == (
        "consent_denied"
    )
    assert a.ping(*FAR, ago(20), device="phone-9", user_id="private")["reason"] == (
        "consent_denied"
    )


def test_a_state_in_another_layout_is_never_taken_for_idle(
    replicas: tuple[Replica, Replica], pg_settings: Settings
) -> None:
    """The script reads only the exact layout the service writes; any other goes back to
    the step, which reads it as JSON (here: the same state with its keys swapped)."""
    a, b = replicas
    assert a.ping(*FAR, ago(30))["reason"] == "no_trigger"
    client = redis.Redis.from_url(pg_settings.redis_url or "")
    key = f"{device_key(pg_settings, 'dev-1')}:state"
    doc = orjson.loads(client.get(key) or b"null")
    assert doc is not None and doc["in"] == {}
    client.set(key, b'{"in":{},"t":%r}' % doc["t"])
    client.close()
    assert b.ping(*FAR, ago(60))["reason"] == "out_of_order"
    assert b.calls == 2
    assert b.ping(*FAR, ago(20))["reason"] == "no_trigger"
