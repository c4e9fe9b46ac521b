"""Webhook delivery against a real receiver on 127.0.0.1 that verifies every request with the
Standard Webhooks reference library: signed, retried with the same id and a growing delay,
Retry-After, 410, giving up, disabling, rotation, subscriptions, replay, two replicas, and a
slow endpoint that holds up nobody else. Backoff delays are settings, so this runs in seconds.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from service.events import log as event_log
from service.events.types import Event, EventType, offer_redeemed, user_erased, visit_event
from service.settings import Settings
from tests import webhook_receiver
from tests.helpers import iso
from tests.service.conftest import Api, _make_api
from tests.webhook_receiver import Receiver, always, fail_first, ok

FAST = {
    "events_poll_s": 0.1,
    "webhook_backoff_base_s": 0.2,
    "webhook_backoff_max_s": 2.0,
    "webhook_timeout_s": 2.0,
}
_pings = itertools.count()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    yield from webhook_receiver.serve()


@contextlib.contextmanager
def fast_api(settings: Settings, **extra: Any) -> Iterator[Api]:
    """The app on PostGIS + Redis with quick polls and short backoff delays."""
    yield from _make_api(settings.model_copy(update={**FAST, **extra}))


@pytest.fixture
def api(pg_settings: Settings) -> Iterator[Api]:
    with fast_api(pg_settings) as api:
        yield api


def subscribe(api: Api, receiver: Receiver, path: str, behaviour: Any, **body: Any) -> str:
    r = api.client.post("/v1/webhooks", json={"url": receiver.url(path), **body}, headers=api.admin)
    assert r.status_code == 201, r.text
    receiver.on(path, behaviour, [r.json()["secret"]])
    return str(r.json()["id"])


def visit(store: str = "s-1", tags: tuple[str, ...] = ("downtown",)) -> Event:
    return visit_event(
        "enter", device_id="dev-1", user_id="u-1", store_id=store, ping_key=f"p-{next(_pings)}",
        occurred_at=datetime.now(UTC), store_tags=tags,
    )  # fmt: skip


def record(api: Api, *events: Event) -> None:
    with api.app_state.engine.begin() as conn:
        event_log.record(conn, list(events))


def deliveries(api: Api, endpoint: str, **params: Any) -> list[dict[str, Any]]:
    r = api.client.get(f"/v1/webhooks/{endpoint}/deliveries", params=params, headers=api.admin)
    assert r.status_code == 200, r.text
    return list(r.json()["deliveries"])


def endpoint(api: Api, endpoint_id: str) -> dict[str, Any]:
    return dict(api.client.get(f"/v1/webhooks/{endpoint_id}", headers=api.admin).json())


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_every_event_type_arrives_signed_with_its_id_and_envelope(
    api: Api, receiver: Receiver
) -> None:
    hook = subscribe(api, receiver, "/crm", ok)
    before = metric("geo_offers_webhook_delivered_total", endpoint=hook)
    now = datetime.now(UTC)
    events = [
        visit(),
        offer_redeemed(
            offer_id="o-1",
            campaign_id="c",
            coupon_code="X",
            store_id="s-1",
            device_id="dev-1",
            user_id="u-1",
            amount=None,
            redeemed_store_id=None,
            redeemed_at=now,
        ),
        user_erased(user_id="u-1", erasure_id="e-1", occurred_at=now),
    ]
    record(api, *events)
    receiver.wait_for(lambda: len(receiver.delivered("/crm")) == 3, what="3 deliveries")
    got = {r.id: r for r in receiver.at("/crm")}
    assert set(got) == {e.id for e in events}
    for e in events:
        req = got[e.id]
        assert req.verified_with == [0], "the standardwebhooks library verifies it"
        assert req.envelope == e.envelope(), "the body is the envelope; webhook-id its id"
        assert req.headers["content-type"] == "application/json"
        assert abs(int(req.headers["webhook-timestamp"]) - now.timestamp()) < 30
    assert len(receiver.at("/crm")) == 3, "delivered once each"
    receiver.wait_for(lambda: endpoint(api, hook)["pending"] == 0, what="outcomes stored")
    listed = deliveries(api, hook)
    assert {d["status"] for d in listed} == {"delivered"}
    assert all(d["attempts"] == 1 and d["last_status_code"] == 200 for d in listed)
    assert metric("geo_offers_webhook_delivered_total", endpoint=hook) - before == 3
    assert endpoint(api, hook)["pending"] == 0
    page = api.client.get("/metrics").text
    assert "geo_offers_events_dropped_total 0.0" in page
    assert 'geo_offers_events_recorded_total{type="user.erased"}' in page


def test_failures_are_retried_with_the_same_id_and_growing_delays(
    api: Api, receiver: Receiver
) -> None:
    hook = subscribe(api, receiver, "/flaky", fail_first(4))
    retried = metric("geo_offers_webhook_retried_total", endpoint=hook)
    e = visit()
    record(api, e)
    receiver.wait_for(lambda: len(receiver.delivered("/flaky")) == 1, what="a delivery")
    receiver.wait_for(lambda: endpoint(api, hook)["pending"] == 0, what="outcome stored")
    attempts = receiver.at("/flaky")
    assert [r.status for r in attempts] == [500, 500, 500, 500, 200]
    assert {r.id for r in attempts} == {e.id}, "one webhook-id across every attempt"
    assert all(r.verified_with == [0] for r in attempts)
    gaps = [b.at - a.at for a, b in itertools.pairwise(attempts)]
    # base 0.2 s doubling (0.2, 0.4, 0.8, 1.6 s), times a jitter in [0.5, 1].
    assert [g >= 0.5 * 0.2 * 2**i - 0.01 for i, g in enumerate(gaps)] == [True] * 4, gaps
    assert gaps[3] > gaps[0], gaps
    (d,) = deliveries(api, hook)
    assert d["status"] == "delivered" and d["attempts"] == 5 and d["event_id"] == e.id
    assert metric("geo_offers_webhook_retried_total", endpoint=hook) - retried == 4
    assert endpoint(api, hook)["failing_since"] is None, "a success ends the failing streak"


def test_retry_after_is_honoured(api: Api, receiver: Receiver) -> None:
    first: dict[str, float] = {}

    def busy(req: webhook_receiver.Received, seen: int) -> tuple[int, dict[str, str], float]:
        if seen == 0:
            first[req.path] = req.at
            if req.path == "/busy-503":
                return 503, {"Retry-After": "2"}, 0.0
            when = datetime.now(UTC) + timedelta(seconds=3)
            return 429, {"Retry-After": format_datetime(when, usegmt=True)}, 0.0
        return 200, {}, 0.0

    subscribe(api, receiver, "/busy-503", busy)
    subscribe(api, receiver, "/busy-429", busy)
    subscribe(api, receiver, "/plain-500", fail_first(1))
    record(api, visit())
    for path in ("/busy-503", "/busy-429", "/plain-500"):
        receiver.wait_for(lambda p=path: len(receiver.delivered(p)) == 1, what=path)
    a503, b503 = receiver.at("/busy-503")
    assert b503.at - a503.at >= 1.9, "Retry-After: 2 (the backoff alone is 0.1-0.2 s)"
    a429, b429 = receiver.at("/busy-429")
    assert b429.at - a429.at >= 1.5, "Retry-After as an HTTP date (whole seconds)"
    a500, b500 = receiver.at("/plain-500")
    assert b500.at - a500.at < 1.5, "no Retry-After: the backoff"


def test_410_disables_the_endpoint_and_enabling_it_resumes(api: Api, receiver: Receiver) -> None:
    hook = subscribe(api, receiver, "/gone", always(410))
    failed = metric("geo_offers_webhook_failed_total", endpoint=hook)
    first = visit()
    record(api, first)
    receiver.wait_for(lambda: endpoint(api, hook)["enabled"] is False, what="disabled")
    info = endpoint(api, hook)
    assert "410" in info["disabled_reason"] and info["disabled_at"]
    (d,) = deliveries(api, hook)
    assert d["status"] == "failed" and d["last_status_code"] == 410
    assert metric("geo_offers_webhook_failed_total", endpoint=hook) - failed == 1
    # Disabled: new events are not fanned out to it; nothing more is sent.
    second = visit()
    record(api, second)
    api.client.portal.call(api.app_state.event_relay.fan_out)  # type: ignore[union-attr]
    assert len(deliveries(api, hook)) == 1 and len(receiver.at("/gone")) == 1
    # The receiver is back: enabling the endpoint (and a replay) brings what it missed.
    receiver.on("/gone", ok)
    since = iso(datetime.now(UTC) - timedelta(minutes=1))
    assert api.client.patch(
        f"/v1/webhooks/{hook}", json={"enabled": True}, headers=api.admin
    ).json()["enabled"]
    r = api.client.post(f"/v1/webhooks/{hook}/replay", params={"since": since}, headers=api.admin)
    assert r.json()["queued"] == 2
    receiver.wait_for(lambda: len(receiver.delivered("/gone")) == 2, what="replayed")
    assert {r.id for r in receiver.delivered("/gone")} == {first.id, second.id}


def test_gives_up_after_the_retry_window_and_disables_a_dead_endpoint(
    pg_settings: Settings, receiver: Receiver
) -> None:
    with fast_api(pg_settings, webhook_retry_for_s=1.0, webhook_disable_after_s=2.5) as api:
        hook = subscribe(api, receiver, "/dead", always(500))
        record(api, visit())
        receiver.wait_for(
            lambda: [d["status"] for d in deliveries(api, hook)] == ["failed"], what="given up"
        )
        (d,) = deliveries(api, hook)
        assert d["last_status_code"] == 500 and d["attempts"] >= 3
        info = endpoint(api, hook)
        assert info["enabled"] and info["failing_since"], "failing, not yet for long enough"
        seen = len(receiver.at("/dead"))
        time.sleep(1.0)
        assert len(receiver.at("/dead")) == seen, "a failed delivery is not attempted again"
        # Still failing 2.5 s after the first failure: disabled.
        record(api, visit())
        receiver.wait_for(lambda: not endpoint(api, hook)["enabled"], what="disabled")
        assert "failed for" in endpoint(api, hook)["disabled_reason"]


def test_rotation_signs_with_both_secrets_during_the_overlap(api: Api, receiver: Receiver) -> None:
    hook = subscribe(api, receiver, "/rotating", ok)
    old = receiver.secrets["/rotating"][0]
    record(api, visit())
    receiver.wait_for(lambda: len(receiver.delivered("/rotating")) == 1)
    new = api.client.post(f"/v1/webhooks/{hook}/secret/rotate", headers=api.admin).json()["secret"]
    receiver.secrets["/rotating"] = [old, new]
    # Workers pick up endpoint changes every poll.
    api.client.portal.call(api.app_state.event_relay.sync_workers)  # type: ignore[union-attr]
    record(api, visit())
    receiver.wait_for(lambda: len(receiver.delivered("/rotating")) == 2)
    before, after = receiver.delivered("/rotating")
    assert before.verified_with == [0]
    assert after.verified_with == [0, 1], "both the old and the new secret verify it"
    assert len(after.headers["webhook-signature"].split(" ")) == 2


def test_subscriptions_by_event_type_and_store_tag(api: Api, receiver: Receiver) -> None:
    subscribe(api, receiver, "/redeemed", ok, events=["offer.redeemed"])
    subscribe(api, receiver, "/downtown", ok, store_tags=["downtown"])
    subscribe(api, receiver, "/all", ok)
    uptown = visit(store="s-up", tags=("uptown",))
    downtown = visit()
    redeemed = offer_redeemed(
        offer_id="o-2", campaign_id="c", coupon_code="X", store_id="s-1", device_id="dev-1",
        user_id="u-1", amount=None, redeemed_store_id=None, redeemed_at=datetime.now(UTC),
        store_tags=("downtown",),
    )  # fmt: skip
    erased = user_erased(user_id="u-1", erasure_id="e-2", occurred_at=datetime.now(UTC))
    record(api, uptown, downtown, redeemed, erased)
    receiver.wait_for(lambda: len(receiver.delivered("/all")) == 4)
    receiver.wait_for(lambda: len(receiver.delivered("/downtown")) == 3)
    receiver.wait_for(lambda: len(receiver.delivered("/redeemed")) == 1)
    assert {r.id for r in receiver.delivered("/redeemed")} == {redeemed.id}
    assert {r.id for r in receiver.delivered("/downtown")} == {downtown.id, redeemed.id, erased.id}


def test_a_slow_endpoint_holds_up_no_other(pg_settings: Settings, receiver: Receiver) -> None:
    with fast_api(pg_settings, webhook_timeout_s=4.0, webhook_concurrency=2) as api:
        subscribe(api, receiver, "/slow", always(200, delay=6.0))
        subscribe(api, receiver, "/fast", ok)
        events = [visit() for _ in range(20)]
        record(api, *events)
        receiver.wait_for(lambda: len(receiver.delivered("/fast")) == 20, what="fast endpoint")
        slow = receiver.at("/slow")
        assert 1 <= len(slow) <= 2, "the slow endpoint has at most its concurrency in flight"
        last_fast = max(r.at for r in receiver.delivered("/fast"))
        assert last_fast < slow[0].at + 4.0, "all 20 arrived while the slow one was still waited on"
        # The slow endpoint's attempts time out and stay pending for a retry.
        slow_id = hook_id(api, "/slow")
        receiver.wait_for(
            lambda: any(d["last_error"] for d in deliveries(api, slow_id)), what="a timeout"
        )
        timed_out = [d for d in deliveries(api, slow_id) if d["last_error"]]
        assert timed_out[0]["last_error"] == "no answer within 4 s"
        assert timed_out[0]["status"] == "pending"
        assert {r.id for r in receiver.at("/slow")} <= {e.id for e in events}


def hook_id(api: Api, path: str) -> str:
    listed = api.client.get("/v1/webhooks", headers=api.admin).json()["webhooks"]
    return next(w["id"] for w in listed if w["url"].endswith(path))


def test_two_replicas_share_the_work_and_deliver_each_event_once(
    pg_settings: Settings, receiver: Receiver
) -> None:
    with fast_api(pg_settings) as a, fast_api(pg_settings) as b:
        subscribe(a, receiver, "/shared", ok)
        events = [visit() for _ in range(60)]
        record(a, *events[:30])
        record(b, *events[30:])
        receiver.wait_for(lambda: len(receiver.delivered("/shared")) == 60, what="60 deliveries")
        ids = [r.id for r in receiver.at("/shared")]
        assert sorted(ids) == sorted(e.id for e in events), "each once: the leases held"
        workers = [x.app_state.event_relay.workers for x in (a, b)]
        assert all(len(w) == 1 for w in workers), "both replicas run a worker for it"


def test_event_types_are_one_vocabulary() -> None:
    assert [t.value for t in EventType] == [
        "visit.entered", "visit.dwelled", "visit.exited", "offer.issued", "offer.held_out",
        "offer.redeemed", "user.erased",
    ]  # fmt: skip


def test_the_embedded_default_delivers_too(tmp_path: Path, receiver: Receiver) -> None:
    """SQLite and in-process state, one process: nothing else to start."""
    settings = Settings(data_dir=tmp_path / "data", database_url=None, redis_url=None)
    with fast_api(settings) as api:
        assert api.app_state.event_relay.streams is None, "no Redis: no streams"
        hook = subscribe(api, receiver, "/embedded", fail_first(1))
        events = [visit() for _ in range(5)]
        record(api, *events)
        receiver.wait_for(lambda: len(receiver.delivered("/embedded")) == 5, what="5 deliveries")
        receiver.wait_for(lambda: endpoint(api, hook)["pending"] == 0, what="outcomes stored")
        assert {r.id for r in receiver.delivered("/embedded")} == {e.id for e in events}
        assert all(d["attempts"] == 2 for d in deliveries(api, hook))
