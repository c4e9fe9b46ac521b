"""Every event type recorded with what it describes, end to end through the API: one user's
visit (enter, dwell, exit), an offer, a held-out decision, the redemption and the erasure
each reach a real receiver that verifies them with the Standard Webhooks library, once per
id; a retried ping records nothing new. On PostGIS + Redis (the visit events go through the
device-state script's inbox stream) and on the embedded default (the local inbox)."""

from __future__ import annotations

import contextlib
import io
import json
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import select

from service.events import log as event_log
from service.events.streams import StreamLayout, entry_event
from service.events.types import EventType, event_id
from service.settings import Settings
from tests import webhook_receiver
from tests.helpers import iso
from tests.service.conftest import Api, _make_api
from tests.webhook_receiver import Receiver, ok

STORES = (
    b"store_id,name,lat,lng,radius_m,tags\nnyc-1,Flatiron,40.74172,-73.98964,50,downtown;cafe\n"
)
INSIDE, OUTSIDE = (40.74172, -73.98964), (40.75172, -73.98964)
CAMPAIGNS = b"""
campaigns:
  - id: latte
    trigger: {type: enter}
    offer: {title: Latte, message: Hi, value: 20, coupon: {type: unique, prefix: LATTE-}, expires_in: 2h}
  - id: muffin
    trigger: {type: dwell, dwell_s: 60}
    holdout_pct: 100
    offer: {title: Muffin, message: Hi, value: 5, coupon: {type: unique, prefix: MUF-}, expires_in: 2h}
"""
FAST = {"events_poll_s": 0.1, "dwell_s": 60.0}
ALL_TYPES = set(EventType)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    yield from webhook_receiver.serve()


@pytest.fixture(params=["postgis", "embedded"])
def events_api(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Api]:
    if request.param == "postgis":
        settings: Settings = request.getfixturevalue("pg_settings")
    else:
        settings = Settings(data_dir=tmp_path / "data", database_url=None, redis_url=None)
    yield from _make_api(settings.model_copy(update=FAST))


def ping(api: Api, at: datetime, where: tuple[float, float], pid: str) -> dict[str, Any]:
    body = {"device_id": "phone-1", "user_id": "u-1", "lat": where[0], "lng": where[1],
            "accuracy_m": 5, "timestamp": iso(at), "ping_id": pid}  # fmt: skip
    r = api.client.post("/v1/locations", json=body, headers=api.sdk)
    assert r.status_code == 200, r.text
    return dict(r.json())


def logged(api: Api) -> list[Any]:
    with api.app_state.engine.connect() as conn:
        return conn.execute(select(event_log.EVENTS).order_by(event_log.EVENTS.c.seq)).all()


def wait_logged(api: Api, n: int) -> list[Any]:
    deadline = time.monotonic() + 10
    while len(rows := logged(api)) < n:
        assert time.monotonic() < deadline, f"{len(rows)} events logged, expected {n}"
        time.sleep(0.05)
    return rows


def test_one_users_story_reaches_the_receiver_once_per_event(
    events_api: Api, receiver: Receiver
) -> None:
    api = events_api
    r = api.client.post("/v1/webhooks", json={"url": receiver.url("/crm")}, headers=api.admin)
    assert r.status_code == 201, r.text
    receiver.on("/crm", ok, [r.json()["secret"]])
    for path, body in (("geofences", STORES), ("campaigns", CAMPAIGNS)):
        files = {"file": ("f", io.BytesIO(body))}
        r = api.client.post(f"/v1/{path}/import", files=files, headers=api.admin)
        assert r.status_code == 200, r.text

    t0 = datetime.now(UTC) - timedelta(seconds=150)
    enter = ping(api, t0, INSIDE, "p-enter")
    assert enter["reason"] == "offer_issued" and [e["type"] for e in enter["events"]] == ["enter"]
    steady = ping(api, t0 + timedelta(seconds=30), INSIDE, "p-steady")
    assert steady["events"] == [], "inside, before the dwell: no event"
    dwell = ping(api, t0 + timedelta(seconds=90), INSIDE, "p-dwell")
    assert [e["type"] for e in dwell["events"]] == ["dwell"] and dwell["reason"] == "holdout"
    exit_ = ping(api, t0 + timedelta(seconds=120), OUTSIDE, "p-exit")
    assert [e["type"] for e in exit_["events"]] == ["exit"]

    # A retried ping replays its first answer and records nothing new.
    before = {row.id for row in wait_logged(api, 5)}
    assert ping(api, t0, INSIDE, "p-enter") == enter
    assert ping(api, t0 + timedelta(seconds=90), INSIDE, "p-dwell") == dwell
    time.sleep(0.5)  # two relay polls
    assert {row.id for row in logged(api)} == before

    # The visit events carry the ids of their identity and the store's tags.
    visits = {
        event_id(EventType.visit_entered, "phone-1", "p-enter", "nyc-1"),
        event_id(EventType.visit_dwelled, "phone-1", "p-dwell", "nyc-1"),
        event_id(EventType.visit_exited, "phone-1", "p-exit", "nyc-1"),
    }
    assert visits <= before
    rows = {row.id: event_log.row_event(row) for row in logged(api)}
    for e in rows.values():
        assert e.store_tags == ("cafe", "downtown") and e.data["user_id"] == "u-1"
        assert e.data["device_id"] == "phone-1" and "lat" not in e.data
    receiver.wait_for(
        lambda: {r.id for r in receiver.delivered("/crm")} >= before, what="visits and offers"
    )

    code = enter["offer"]["coupon_code"]
    r = api.client.post("/v1/redemptions", json={"coupon_code": code}, headers=api.server)
    assert r.status_code == 200, r.text
    assert api.client.delete("/v1/users/u-1", headers=api.admin).status_code == 204
    receiver.wait_for(
        lambda: {r.envelope["type"] for r in receiver.delivered("/crm")} == ALL_TYPES,
        what="every event type",
    )

    final = logged(api)
    assert Counter(row.type for row in final) == {
        "visit.entered": 1, "visit.dwelled": 1, "visit.exited": 1, "offer.issued": 1,
        "offer.held_out": 1, "offer.redeemed": 1, "user.erased": 1,
    }  # fmt: skip
    delivered = receiver.delivered("/crm")
    assert Counter(r.id for r in delivered) == Counter({row.id: 1 for row in final})
    assert all(r.verified_with == [0] for r in delivered)
    by_type = {r.envelope["type"]: r.envelope for r in delivered}
    issued = by_type["offer.issued"]["data"]
    assert issued["offer_id"] == enter["offer"]["offer_id"] and issued["coupon_code"] == code
    assert by_type["offer.held_out"]["data"]["campaign_id"] == "muffin"
    assert by_type["offer.held_out"]["data"]["ping_id"] == "p-dwell"
    assert by_type["user.erased"]["data"]["user_id"] == "u-1"
    # The erasure redacted the user's earlier events in the log (deliveries already made
    # carried them; a system that got them hears of the erasure).
    for row in final:
        if row.type != "user.erased":
            assert row.data["user_id"] is None and row.data["device_id"] is None

    if api.settings.redis_url:  # the same events in the streams; the inbox drained
        layout = StreamLayout(api.settings.redis_prefix, api.settings.stream_partitions)
        client = redis.Redis.from_url(api.settings.redis_url)
        deadline = time.monotonic() + 10
        while True:
            streamed = Counter(
                entry_event(fields).id
                for key in layout.events_keys()
                for _, fields in client.xrange(key)
            )
            if set(streamed) >= {row.id for row in final} or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert streamed == Counter({row.id: 1 for row in final})
        assert client.xlen(layout.inbox_key(layout.partition("phone-1"))) == 0
        # The README's consumer over every partition, as written there (but not blocking).
        r, prefix = client, api.settings.redis_prefix
        keys = [f"{prefix}:{{ev:{n}}}:events" for n in range(64)]
        for key in keys:
            with contextlib.suppress(redis.ResponseError):  # the group exists
                r.xgroup_create(key, "crm", id="0", mkstream=True)
        handled: list[dict[str, Any]] = []
        while batch := r.xreadgroup("crm", "worker-1", {k: ">" for k in keys}, count=100):
            for key, entries in batch:
                for entry_id, fields in entries:
                    handled.append(json.loads(fields[b"envelope"]))
                    r.xack(key, "crm", entry_id)
        assert sorted(e["id"] for e in handled) == sorted(row.id for row in final)
        client.close()


def test_a_new_device_of_a_user_without_consent_records_no_visit(api: Api) -> None:
    """The script stores the step with its events before the user's consent flag is seen
    (same round trip); the undo takes the events out of the inbox with the state."""
    r = api.client.post(
        "/v1/geofences/import", files={"file": ("s.csv", io.BytesIO(STORES))}, headers=api.admin
    )
    assert r.status_code == 200, r.text
    r = api.client.patch("/v1/users/u-9", json={"location_consent": False}, headers=api.server)
    assert r.status_code == 200, r.text
    body = {"device_id": "new-phone", "user_id": "u-9", "lat": INSIDE[0], "lng": INSIDE[1],
            "accuracy_m": 5, "timestamp": iso(datetime.now(UTC))}  # fmt: skip
    r = api.client.post("/v1/locations", json=body, headers=api.sdk)
    assert r.json()["reason"] == "consent_denied" and r.json()["events"] == []
    layout = StreamLayout(api.settings.redis_prefix, api.settings.stream_partitions)
    client = redis.Redis.from_url(api.settings.redis_url or "")
    assert client.xrange(layout.inbox_key(layout.partition("new-phone"))) == []
    client.close()
    time.sleep(1.5)  # the relays' polls
    assert logged(api) == []
