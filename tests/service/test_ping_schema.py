"""Every reason code goes through the ping lane, and every answer's bytes validate against
the schema the app itself publishes (``/openapi.json``): what is documented is what is sent.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import socket
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import redis
from fastapi.testclient import TestClient
from jsonschema import Draft202012Validator

from service.locations.service import answer_bytes
from service.reasons import ANSWER_REASONS, Reason
from service.settings import Settings
from service.state.base import encode_answer
from tests.helpers import ago, device_key, iso
from tests.service.conftest import Api, _make_api
from tests.service.test_offers import hours_around

# One store per scenario, 1 km apart along a meridian in Paris (store local time: UTC+1/+2).
SCENARIOS = (
    "issued", "paused", "not-started", "ended", "schedule", "dwell", "audience-in",
    "audience-ex", "exception", "rollout", "capped", "budget", "holdout", "ranked",
    "channel", "elsewhere", "plain",
)  # fmt: skip
BASE_LAT, LNG = 48.80, 2.35
_ids = itertools.count()


def where(store: str) -> tuple[float, float]:
    return BASE_LAT + 0.01 * SCENARIOS.index(store), LNG


def stores_csv() -> bytes:
    rows = ["store_id,name,lat,lng,radius_m,timezone"]
    rows += [f"{s},Store {s},{where(s)[0]},{LNG},50,Europe/Paris" for s in SCENARIOS]
    return ("\n".join(rows) + "\n").encode()


def campaigns_yaml() -> str:
    tz = "Europe/Paris"
    offer = "{title: T, message: 'Hi {{ first_name | default: \"there\" }}', value: 1}"

    def c(cid: str, store: str, **fields: str) -> str:
        base = {"trigger": "{type: enter}", "targeting": f"{{store_ids: [{store}]}}"}
        base.update(fields)
        lines = [f"  - id: {cid}", f"    offer: {offer}"]
        return "\n".join(lines + [f"    {k}: {v}" for k, v in base.items()]) + "\n"

    return "campaigns:\n" + "".join(
        [
            c("issued", "issued"),
            c("paused", "paused", status="paused"),
            c("not-started", "not-started", starts_at="2999-01-01T00:00:00Z"),
            c("ended", "ended", ends_at="2001-01-01T00:00:00Z"),
            c("schedule", "schedule", schedule=f"{{hours: ['{hours_around(tz, 3, 5)}']}}"),
            c("dwell", "dwell", trigger="{type: dwell, dwell_s: 600}"),
            c("audience-in", "audience-in",
              audience="{include: [{field: loyalty_tier, op: in, value: [gold]}]}"),
            c("audience-ex", "audience-ex",
              audience="{exclude: [{field: open_support_ticket, op: eq, value: false}]}"),
            c("exception", "exception", exceptions="[{event: purchase, within: 24h}]"),
            c("rollout", "rollout", rollout_pct="0"),
            c("capped", "capped", caps="[{count: 1, window: 24h}]"),
            c("budget", "budget", budget="{total: 1}"),
            c("holdout", "holdout", holdout_pct="100"),
            c("ranked-a", "ranked", priority="2", holdout_pct="100"),
            c("ranked-b", "ranked", priority="1"),
            c("channel", "channel", channel="push"),
            c("elsewhere", "issued"),  # targets another store than the one pinged
        ]
    )  # fmt: skip


class Validator:
    """The app's own published schema of the ping answers."""

    def __init__(self, client: TestClient) -> None:
        spec = client.get("/openapi.json").json()
        self.components = spec["components"]
        ok = spec["paths"]["/v1/locations"]["post"]["responses"]["200"]
        self.ping = self._validator(ok["content"]["application/json"]["schema"])
        batch = spec["paths"]["/v1/locations/batch"]["post"]["responses"]["200"]
        self.batch = self._validator(batch["content"]["application/json"]["schema"])
        self.documented = set(self.components["schemas"]["PingOut"]["properties"]["reason"]["enum"])

    def _validator(self, schema: dict[str, Any]) -> Draft202012Validator:
        return Draft202012Validator({**schema, "components": self.components})


class Pinger:
    def __init__(self, api: Api, validator: Validator) -> None:
        self.api, self.validator = api, validator
        self.reasons: set[str] = set()
        self.decision_reasons: set[str] = set()

    def __call__(
        self, store: str | None, *, explain: bool = False, lat: float | None = None,
        **fields: Any,
    ) -> dict[str, Any]:  # fmt: skip
        if store is not None:
            lat = where(store)[0]
        body = {"device_id": f"dev-{next(_ids)}", "lat": lat, "lng": LNG, "accuracy_m": 5,
                "timestamp": iso(ago(2)), **fields}  # fmt: skip
        headers = self.api.admin if explain else self.api.sdk
        r = self.api.client.post(
            "/v1/locations", params={"explain": "true"} if explain else None, json=body,
            headers=headers,
        )  # fmt: skip
        assert r.status_code == 200, r.text
        doc = r.json()
        errors = [e.message for e in self.validator.ping.iter_errors(doc)]
        assert not errors, (doc, errors)
        self.reasons.add(doc["reason"])
        self.decision_reasons.update(d["reason"] for d in doc.get("decisions") or ())
        return doc


@pytest.fixture
def scene(api: Api) -> Iterator[Pinger]:
    r = api.client.post(
        "/v1/geofences/import", files={"file": ("s.csv", stores_csv())}, headers=api.admin
    )
    assert r.status_code == 200, r.text
    yield Pinger(api, Validator(api.client))


def _import_campaigns(api: Api, text: str) -> None:
    r = api.client.post(
        "/v1/campaigns/import", files={"file": ("c.yaml", io.BytesIO(text.encode()))},
        headers=api.admin,
    )  # fmt: skip
    assert r.status_code == 200, r.text


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_every_reason_through_the_lane_matches_the_published_schema(
    scene: Pinger, pg_settings: Settings
) -> None:
    ping, api = scene, scene.api
    assert ping.validator.documented == {r.value for r in ANSWER_REASONS}
    assert api.client.app.ping_lane is not None  # type: ignore[attr-defined]

    # Steps 1-3, before any campaign exists.
    assert ping("plain")["reason"] == Reason.NO_CAMPAIGN
    assert ping(None, lat=BASE_LAT - 0.5)["reason"] == Reason.NO_TRIGGER
    assert ping("plain", accuracy_m=500)["reason"] == Reason.LOW_ACCURACY
    assert ping("plain", timestamp=iso(ago(900)))["reason"] == Reason.STALE_PING
    ping("plain", device_id="back", timestamp=iso(ago(10)))
    assert ping("plain", device_id="back", timestamp=iso(ago(20)))["reason"] == (
        Reason.OUT_OF_ORDER
    )
    api.client.patch("/v1/users/private", json={"location_consent": False}, headers=api.server)
    assert ping("plain", user_id="private")["reason"] == Reason.CONSENT_DENIED

    # Step 4 and after.
    _import_campaigns(api, campaigns_yaml())
    expected = {
        "issued": Reason.OFFER_ISSUED, "paused": Reason.CAMPAIGN_PAUSED,
        "not-started": Reason.NOT_STARTED, "ended": Reason.ENDED,
        "schedule": Reason.OUTSIDE_SCHEDULE, "dwell": Reason.TRIGGER_MISMATCH,
        "audience-in": Reason.AUDIENCE_NOT_INCLUDED, "audience-ex": Reason.AUDIENCE_EXCLUDED,
        "rollout": Reason.NOT_IN_ROLLOUT, "holdout": Reason.HOLDOUT,
        "plain": Reason.NOT_TARGETED,
    }  # fmt: skip
    for store, reason in expected.items():
        assert ping(store, user_id=f"u-{store}")["reason"] == reason, store
    assert ping("channel", channel="in_app")["reason"] == Reason.CHANNEL_MISMATCH
    api.client.post(
        "/v1/users/buyer/events", json={"type": "purchase", "occurred_at": iso(ago(5))},
        headers=api.server,
    )  # fmt: skip
    assert ping("exception", user_id="buyer")["reason"] == Reason.EXCEPTION_EVENT
    assert ping("capped", user_id="one")["reason"] == Reason.OFFER_ISSUED
    assert ping("capped", user_id="one")["reason"] == Reason.CAPPED
    assert ping("budget", user_id="first")["reason"] == Reason.OFFER_ISSUED
    assert ping("budget", user_id="second")["reason"] == Reason.BUDGET_EXHAUSTED
    ranked = ping("ranked", explain=True)
    assert {d["campaign_id"]: d["reason"] for d in ranked["decisions"]}["ranked-b"] == (
        Reason.LOWER_PRIORITY
    )
    explained = ping("issued", explain=True)
    assert explained["offer"] is not None and explained["decisions"]
    spoofed = ping("issued", explain=True, mocked=True)
    assert spoofed["reason"] == Reason.SUSPECTED_SPOOFING
    assert {"campaign_id": "issued", "reason": Reason.SUSPECTED_SPOOFING,
            "check": "mocked_location"} in spoofed["decisions"]  # fmt: skip

    # A retry of a ping whose decision is still running (here: never finishes).
    pid = "p-running"
    key = f"{device_key(pg_settings, 'slow-dev')}:ping:{pid}"
    provisional = answer_bytes(pid, [], Reason.IN_PROGRESS)
    with redis.Redis.from_url(pg_settings.redis_url or "") as rc:
        rc.set(key, encode_answer(Reason.IN_PROGRESS, provisional, pending=True), ex=60)
    assert ping("issued", device_id="slow-dev", ping_id=pid)["reason"] == Reason.IN_PROGRESS

    # The database fails under the decision: no offer, fail closed.
    with psycopg.connect(pg_settings.database_url or "", autocommit=True) as conn:
        conn.execute("ALTER TABLE users RENAME TO users_away")
        try:
            assert ping("issued", user_id="u-db")["reason"] == Reason.UNAVAILABLE
        finally:
            conn.execute("ALTER TABLE users_away RENAME TO users")

    # Quiet hours are a policy of every campaign: last.
    quiet = f"policies:\n  quiet_hours: '{hours_around('Europe/Paris', -1, 1)}'\n"
    _import_campaigns(api, quiet + campaigns_yaml())
    assert ping("issued", user_id="late")["reason"] == Reason.QUIET_HOURS

    # The device-state store down: a replica whose Redis is gone.
    dead = pg_settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{_free_port()}/0"})
    with contextlib.contextmanager(_make_api)(dead) as down:
        ping_down = Pinger(down, ping.validator)
        assert ping_down("issued")["reason"] == Reason.STATE_UNAVAILABLE
        ping.reasons |= ping_down.reasons

    # A batch answer validates too.
    body = {"pings": [{"device_id": "b", "lat": where("issued")[0], "lng": LNG,
                       "accuracy_m": 5, "timestamp": iso(ago(3))}]}  # fmt: skip
    r = api.client.post("/v1/locations/batch", json=body, headers=api.sdk)
    assert r.status_code == 200 and not list(ping.validator.batch.iter_errors(r.json()))

    assert ping.reasons == {r.value for r in ANSWER_REASONS} - {Reason.LOWER_PRIORITY}
    assert Reason.LOWER_PRIORITY in ping.decision_reasons


def test_the_schema_refuses_what_the_lane_never_sends(scene: Pinger) -> None:
    """The check has teeth: an unknown reason, a loose offer or an extra field fail it."""
    v = scene.validator.ping
    good = {"ping_id": "p", "events": [], "offer": None, "reason": "no_trigger"}
    assert v.is_valid(good)
    assert not v.is_valid({**good, "reason": "future_ping"})
    assert not v.is_valid({**good, "reason": "made_up"})
    assert not v.is_valid({**good, "pending": True})
    assert not v.is_valid({**good, "offer": {"coupon_code": "X"}})
