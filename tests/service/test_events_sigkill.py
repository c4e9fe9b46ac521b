"""Nothing lost: the service (a real uvicorn process on PostGIS + Redis) is killed with
SIGKILL while deliveries are in flight and again right after recording, then started again.
Every event reaches the receiver (verified with the standardwebhooks library) and the
stream, and none arrives under two ids."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import redis
from sqlalchemy import select

from service.db.engine import make_engine
from service.events import log as event_log
from service.events.streams import StreamLayout, entry_event
from service.events.types import EventType, event_id
from service.offers import repository as offers_repo
from service.settings import Settings
from tests import webhook_receiver
from tests.helpers import iso
from tests.service.test_server_e2e import cli, server_env, start_server  # noqa: F401
from tests.webhook_receiver import Receiver, always, ok

FAST = {
    "GEO_OFFERS_EVENTS_POLL_S": "0.3",
    "GEO_OFFERS_WEBHOOK_TIMEOUT_S": "2",
    "GEO_OFFERS_WEBHOOK_BACKOFF_BASE_S": "0.2",
    "GEO_OFFERS_WEBHOOK_BACKOFF_MAX_S": "1",
}


VISIT_STORE = b"store_id,name,lat,lng,radius_m\nk-1,Kill,48.8593,2.3618,50\n"
INSIDE, OUTSIDE = (48.8593, 2.3618), (48.8693, 2.3618)
VISIT_TYPES = (EventType.visit_entered, EventType.visit_dwelled, EventType.visit_exited)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    yield from webhook_receiver.serve()


def kill(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)


def add_offers(url: str, n: int, start: int) -> list[str]:
    engine = make_engine(Settings(database_url=url))
    now = datetime.now(UTC)
    codes = []
    with engine.begin() as conn:
        for i in range(start, start + n):
            code = f"KILL-{i:04d}"
            offers_repo.insert_offer(
                conn,
                {
                    "offer_id": f"o-{i}", "campaign_id": "c", "user_key": f"u-{i}",
                    "device_id": f"d-{i}", "store_id": "s", "channel": "push",
                    "coupon_code": code, "fixed_code": False, "title": "t", "message": "m",
                    "value": 1.0, "distance_m": 1.0, "ping_id": f"p-{i}", "issued_at": now,
                    "expires_at": now + timedelta(hours=1),
                },
            )  # fmt: skip
            codes.append(code)
    engine.dispose()
    return codes


def redeem(base: str, key: str, codes: list[str]) -> None:
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}) as client:
        for code in codes:
            r = client.post("/v1/redemptions", json={"coupon_code": code})
            assert r.status_code == 200, r.text


def test_sigkill_between_recording_and_delivering_loses_nothing(
    server_env: dict[str, str],  # noqa: F811
    migrated_postgis: str,
    receiver: Receiver,
    redis_url: str,
    tmp_path: Path,
) -> None:
    env = {**server_env, **FAST}
    admin = cli(env, "keys", "create", "--role", "admin").stdout.strip()
    server = cli(env, "keys", "create", "--role", "server").stdout.strip()
    proc, base = start_server(env, tmp_path)
    try:
        r = httpx.post(
            f"{base}/v1/webhooks",
            json={"url": receiver.url("/crm"), "events": ["offer.redeemed"]},
            headers={"Authorization": f"Bearer {admin}"},
        )
        assert r.status_code == 201, r.text
        hook, secret = r.json()["id"], r.json()["secret"]
        # 1. The receiver hangs: attempts are in flight when the process is killed.
        receiver.on("/crm", always(200, delay=30.0), [secret])
        first = add_offers(migrated_postgis, 10, 0)
        redeem(base, server, first)
        receiver.wait_for(lambda: len(receiver.at("/crm")) >= 4, what="attempts in flight")
        kill(proc)
        # 2. Recorded, and killed before the relay's next poll can fan them out.
        receiver.on("/crm", always(503), [secret])
        proc, base = start_server(env, tmp_path)
        second = add_offers(migrated_postgis, 10, 10)
        redeem(base, server, second)
        kill(proc)
        # 3. Back with a healthy receiver: everything arrives.
        receiver.on("/crm", ok, [secret])
        proc, base = start_server(env, tmp_path)
        expected = {event_id(EventType.offer_redeemed, f"o-{i}") for i in range(20)}
        receiver.wait_for(
            lambda: {r.id for r in receiver.delivered("/crm")} >= expected,
            timeout=60,
            what="every event delivered",
        )
        deadline = time.monotonic() + 20
        while True:  # the last outcomes are being stored
            pending = httpx.get(
                f"{base}/v1/webhooks/{hook}", headers={"Authorization": f"Bearer {admin}"}
            ).json()["pending"]
            if pending == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert pending == 0
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(10)

    received = receiver.at("/crm")
    assert {r.id for r in received} == expected, "no id the log does not have"
    assert all(r.verified_with == [0] for r in received)
    bodies: dict[str, set[bytes]] = {}
    for r in received:
        bodies.setdefault(r.id, set()).add(r.body)
        assert r.envelope["id"] == r.id and r.envelope["type"] == "offer.redeemed"
    assert all(len(b) == 1 for b in bodies.values()), "a repeat is the same message"
    offers = {r.envelope["data"]["offer_id"] for r in received}
    assert offers == {f"o-{i}" for i in range(20)}, "one id per redemption"

    # The stream has every event too, with its id in each entry.
    engine = make_engine(Settings(database_url=migrated_postgis))
    with engine.connect() as conn:
        ids = set(conn.execute(select(event_log.EVENTS.c.id)).scalars())
        unstreamed = conn.execute(
            select(event_log.EVENTS.c.id).where(~event_log.EVENTS.c.streamed)
        ).all()
    engine.dispose()
    assert ids == expected and unstreamed == []
    layout = StreamLayout(env["GEO_OFFERS_REDIS_PREFIX"], Settings().stream_partitions)
    client = redis.Redis.from_url(redis_url)
    seen = set()
    for key in layout.events_keys():
        for _id, fields in client.xrange(key):
            seen.add(entry_event(fields).id)
    client.close()
    assert seen == expected


def test_sigkill_after_the_state_step_loses_no_visit_event(
    server_env: dict[str, str],  # noqa: F811
    receiver: Receiver,
    redis_url: str,
    tmp_path: Path,
) -> None:
    """The device-state script stored the step and its visit events in the partition's inbox;
    the process is killed before any relay moved them: after a restart they all arrive, each
    under the id of its device, ping and store, and a retried ping adds none."""
    # A slow first process: its inbox import runs at start, then not for a minute (its
    # relays in the worker, so that the pass at start comes before it is ready).
    slow = {
        **server_env, **FAST, "GEO_OFFERS_EVENTS_POLL_S": "60", "GEO_OFFERS_RELAY_PROCESS": "false"
    }  # fmt: skip
    env = {**server_env, **FAST}
    admin = cli(env, "keys", "create", "--role", "admin").stdout.strip()
    sdk = cli(env, "keys", "create", "--role", "sdk").stdout.strip()
    proc, base = start_server(slow, tmp_path)
    try:
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {admin}"}) as c:
            r = c.post("/v1/geofences/import", files={"file": ("s.csv", VISIT_STORE)})
            assert r.status_code == 200, r.text
            r = c.post(
                "/v1/webhooks",
                json={"url": receiver.url("/visits"), "events": [t.value for t in VISIT_TYPES]},
            )
            assert r.status_code == 201, r.text
        receiver.on("/visits", ok, [r.json()["secret"]])
        now = datetime.now(UTC)
        expected = set()
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {sdk}"}) as c:
            for i in range(10):
                for kind, (lat, lng), dt in (("enter", INSIDE, 20), ("exit", OUTSIDE, 10)):
                    body = {"device_id": f"kd-{i}", "lat": lat, "lng": lng, "accuracy_m": 5,
                            "timestamp": iso(now - timedelta(seconds=dt)),
                            "ping_id": f"kp-{i}-{kind}"}  # fmt: skip
                    r = c.post("/v1/locations", json=body)
                    assert [e["type"] for e in r.json()["events"]] == [kind], r.text
                    type_ = VISIT_TYPES[0] if kind == "enter" else VISIT_TYPES[2]
                    expected.add(event_id(type_, f"kd-{i}", f"kp-{i}-{kind}", "k-1"))
        layout = StreamLayout(env["GEO_OFFERS_REDIS_PREFIX"], Settings().stream_partitions)
        client = redis.Redis.from_url(redis_url)
        inbox = [
            entry_event(fields).id
            for n in range(layout.partitions)
            for _, fields in client.xrange(layout.inbox_key(n))
        ]
        assert sorted(inbox) == sorted(expected), "stored with the steps, not yet imported"
        kill(proc)

        proc, base = start_server(env, tmp_path)
        receiver.wait_for(
            lambda: {r.id for r in receiver.delivered("/visits")} >= expected,
            timeout=60,
            what="every visit event delivered",
        )
        # A retry of a ping answered before the kill: its first answer, no new event.
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {sdk}"}) as c:
            body = {"device_id": "kd-0", "lat": INSIDE[0], "lng": INSIDE[1], "accuracy_m": 5,
                    "timestamp": iso(now - timedelta(seconds=20)), "ping_id": "kp-0-enter"}  # fmt: skip
            assert [e["type"] for e in c.post("/v1/locations", json=body).json()["events"]] == [
                "enter"
            ]
        time.sleep(1.0)  # a few relay polls
        assert all(client.xlen(layout.inbox_key(n)) == 0 for n in range(layout.partitions))
        client.close()
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(10)
    delivered = receiver.delivered("/visits")
    assert {r.id for r in receiver.at("/visits")} == expected, "no other id"
    assert all(r.verified_with == [0] for r in delivered)
    engine = make_engine(Settings(database_url=server_env["GEO_OFFERS_DATABASE_URL"]))
    with engine.connect() as conn:
        ids = list(conn.execute(select(event_log.EVENTS.c.id)).scalars())
    engine.dispose()
    assert sorted(ids) == sorted(expected), "each once in the log"
