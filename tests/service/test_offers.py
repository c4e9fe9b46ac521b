"""Offer decisioning end to end through the API: campaigns, rules, caps, coupons, reports."""

from __future__ import annotations

import io
import itertools
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from tests.helpers import ago, device_key, iso
from tests.service.conftest import Api

STORES = b"""store_id,name,lat,lng,radius_m,tags,timezone
nyc-1,Flatiron Coffee,40.74172,-73.98964,50,downtown,America/New_York
tok-1,Shibuya Coffee,35.65950,139.70050,50,station,Asia/Tokyo
"""
_devices = itertools.count()


def hours_around(tz: str, start_h: float, end_h: float) -> str:
    """A daily window from ``start_h`` to ``end_h`` hours after the store's local time now."""
    local = datetime.now(UTC).astimezone(ZoneInfo(tz))
    a = local + timedelta(hours=start_h)
    b = local + timedelta(hours=end_h)
    return f"{a:%H:%M}-{b:%H:%M}"


def setup(api: Api, campaigns_yaml: str) -> None:
    r = api.client.post(
        "/v1/geofences/import", files={"file": ("s.csv", STORES)}, headers=api.admin
    )
    assert r.status_code == 200, r.text
    r = api.client.post(
        "/v1/campaigns/import",
        files={"file": ("c.yaml", io.BytesIO(campaigns_yaml.encode()))},
        headers=api.admin,
    )
    assert r.status_code == 200, r.text


def ping(
    api: Api, store: str = "nyc-1", user: str | None = "u-1", device: str | None = None,
    explain: bool = False, **extra: Any,
) -> dict[str, Any]:  # fmt: skip
    lat, lng = {"nyc-1": (40.74172, -73.98964), "tok-1": (35.6595, 139.7005)}[store]
    body = {"device_id": device or f"dev-{next(_devices)}", "lat": lat, "lng": lng,
            "accuracy_m": 5, "timestamp": iso(ago(2)), **extra}  # fmt: skip
    if user:
        body["user_id"] = user
    headers = api.admin if explain else api.sdk
    r = api.client.post("/v1/locations", params={"explain": explain}, json=body, headers=headers)
    assert r.status_code == 200, r.text
    return r.json()


def campaign(cid: str = "latte", **fields: str) -> str:
    base = {
        "trigger": "{type: enter}",
        "offer": "{title: 20% off your latte, message: \"Hi {{ first_name | default: 'there' }}, 20% off at {{ store.name }}.\", value: 20, coupon: {type: unique, prefix: LATTE-}, expires_in: 2h}",
    }
    base.update(fields)
    lines = [f"  - id: {cid}"] + [f"    {k}: {v}" for k, v in base.items()]
    return "\n".join(lines) + "\n"


def test_offer_issued_with_liquid_default_and_stored(any_api: Api) -> None:
    setup(any_api, "campaigns:\n" + campaign())
    answer = ping(any_api, user="no-name")
    assert answer["reason"] == "offer_issued", answer
    offer = answer["offer"]
    assert offer["message"] == "Hi there, 20% off at Flatiron Coffee."
    assert offer["coupon_code"].startswith("LATTE-") and len(offer["coupon_code"]) == 6 + 16
    assert offer["store"] == {"store_id": "nyc-1", "name": "Flatiron Coffee"}
    assert set(offer) >= {"offer_id", "campaign_id", "title", "expires_at", "distance_m"}
    any_api.client.patch("/v1/users/ann", json={"first_name": "Ann"}, headers=any_api.server)
    assert ping(any_api, user="ann")["offer"]["message"].startswith("Hi Ann,")
    report = any_api.client.get("/v1/campaigns/latte/report", headers=any_api.admin).json()
    assert report["arms"]["treatment"]["issued"] == 2
    assert report["arms"]["treatment"]["exposed"] == 2


def test_retried_ping_returns_the_same_offer(api: Api) -> None:
    setup(api, "campaigns:\n" + campaign())
    first = ping(api, device="d-retry", ping_id="p-1")
    again = ping(api, device="d-retry", ping_id="p-1")
    assert first["offer"] is not None and again == first
    report = api.client.get("/v1/campaigns/latte/report", headers=api.admin).json()
    assert report["arms"]["treatment"]["issued"] == 1


def test_schedule_in_store_local_time(any_api: Api) -> None:
    tz = "Asia/Tokyo"
    yaml = (
        "campaigns:\n"
        + campaign(
            "now-open",
            schedule=f"{{hours: ['{hours_around(tz, -1, 1)}']}}",
            targeting="{store_ids: [tok-1]}",
        )
        + campaign(
            "later",
            priority="5",
            schedule=f"{{hours: ['{hours_around(tz, 3, 5)}']}}",
            targeting="{store_ids: [tok-1]}",
        )
    )
    setup(any_api, yaml)
    answer = ping(any_api, store="tok-1", explain=True)
    assert answer["offer"]["campaign_id"] == "now-open"
    reasons = {d["campaign_id"]: d["reason"] for d in answer["decisions"]}
    assert reasons == {"now-open": "offer_issued", "later": "outside_schedule"}
    # The New York store is not targeted by either.
    other = ping(any_api, store="nyc-1", explain=True)
    assert other["offer"] is None and other["reason"] == "not_targeted"


def test_quiet_hours_policy(any_api: Api) -> None:
    yaml = (
        f"policies:\n  quiet_hours: '{hours_around('America/New_York', -1, 1)}'\ncampaigns:\n"
        + campaign()
    )
    setup(any_api, yaml)
    answer = ping(any_api)
    assert answer["offer"] is None and answer["reason"] == "quiet_hours"


def test_purchase_event_cancels_the_very_next_ping(any_api: Api) -> None:
    setup(any_api, "campaigns:\n" + campaign(exceptions="[{event: purchase, within: 24h}]"))
    r = any_api.client.post(
        "/v1/users/buyer/events",
        json={"type": "purchase", "occurred_at": iso(ago(1)), "store_id": "nyc-1"},
        headers=any_api.server,
    )
    assert r.status_code == 201, r.text
    answer = ping(any_api, user="buyer")
    assert answer["offer"] is None and answer["reason"] == "exception_event"
    assert ping(any_api, user="someone-else")["reason"] == "offer_issued"


def test_audience_include_and_exclude(any_api: Api) -> None:
    setup(
        any_api,
        "campaigns:\n"
        + campaign(
            audience="{include: [{field: loyalty_tier, op: in, value: [gold]}, {field: account_age_days, op: gte, value: 7}], exclude: [{field: open_support_ticket, op: eq, value: true}]}"
        ),
    )
    c, h = any_api.client, any_api.server
    c.patch(
        "/v1/users/gold",
        json={"loyalty_tier": "gold", "signup_at": iso(ago(30 * 86400))},
        headers=h,
    )
    c.patch("/v1/users/new", json={"loyalty_tier": "gold", "signup_at": iso(ago(3600))}, headers=h)
    c.patch(
        "/v1/users/angry",
        json={"loyalty_tier": "gold", "signup_at": iso(ago(30 * 86400))},
        headers=h,
    )
    c.post(
        "/v1/users/angry/events",
        json={"type": "support_ticket_opened", "occurred_at": iso(ago(60))},
        headers=h,
    )
    assert ping(any_api, user="gold")["reason"] == "offer_issued"
    assert ping(any_api, user="new")["reason"] == "audience_not_included"
    assert ping(any_api, user="angry")["reason"] == "audience_excluded"
    c.post(
        "/v1/users/angry/events",
        json={"type": "support_ticket_closed", "occurred_at": iso(ago(5))},
        headers=h,
    )
    assert ping(any_api, user="angry")["reason"] == "offer_issued"


def test_frequency_caps_and_min_gap(any_api: Api) -> None:
    yaml = (
        "policies:\n  min_gap: 30m\ncampaigns:\n"
        + campaign("a", caps="[{count: 1, window: 24h}]")
        + campaign("b", priority="-1")
    )
    setup(any_api, yaml)
    assert ping(any_api, user="cap")["offer"]["campaign_id"] == "a"
    second = ping(any_api, user="cap", explain=True)
    assert second["offer"] is None and second["reason"] == "capped"
    caps = {d["campaign_id"]: d.get("cap") for d in second["decisions"]}
    assert caps == {"a": "campaign:1/86400s", "b": "min_gap:1800s"}


def test_paused_campaign_and_patch(any_api: Api) -> None:
    setup(any_api, "campaigns:\n" + campaign())
    r = any_api.client.patch(
        "/v1/campaigns/latte", json={"status": "paused"}, headers=any_api.admin
    )
    assert r.status_code == 200 and r.json()["status"] == "paused"
    assert ping(any_api)["reason"] == "campaign_paused"
    any_api.client.patch("/v1/campaigns/latte", json={"status": "active"}, headers=any_api.admin)
    assert ping(any_api)["reason"] == "offer_issued"
    assert (
        any_api.client.patch(
            "/v1/campaigns/nope", json={"status": "paused"}, headers=any_api.admin
        ).status_code
        == 404
    )


def test_holdout_split_is_stable_and_recorded(api: Api) -> None:
    setup(api, "campaigns:\n" + campaign(holdout_pct="20"))
    outcomes = {}
    for i in range(300):
        outcomes[f"user-{i}"] = ping(api, user=f"user-{i}")["reason"]
    control = [u for u, r in outcomes.items() if r == "holdout"]
    assert set(outcomes.values()) == {"holdout", "offer_issued"}
    assert 0.12 < len(control) / 300 < 0.28
    # Stable: the same users are in control on their next visit.
    for user in control[:10]:
        assert ping(api, user=user)["reason"] == "holdout"
    report = api.client.get("/v1/campaigns/latte/report", headers=api.admin).json()
    assert report["arms"]["control"]["exposed"] == len(control)
    assert report["arms"]["treatment"]["exposed"] == 300 - len(control)


def test_redemptions_once_expired_forged_and_idempotent(any_api: Api) -> None:
    setup(any_api, "campaigns:\n" + campaign())
    code = ping(any_api)["offer"]["coupon_code"]
    c, h = any_api.client, any_api.server
    first = c.post(
        "/v1/redemptions",
        json={"coupon_code": code, "store_id": "nyc-1", "amount": 4.5},
        headers={**h, "Idempotency-Key": "k1"},
    )
    assert first.status_code == 200, first.text
    replay = c.post(
        "/v1/redemptions", json={"coupon_code": code}, headers={**h, "Idempotency-Key": "k1"}
    )
    assert replay.status_code == 200 and replay.json() == first.json()
    again = c.post("/v1/redemptions", json={"coupon_code": code}, headers=h)
    assert (
        again.status_code == 409 and first.json()["redeemed_at"] in again.json()["error"]["message"]
    )
    forged = c.post(
        "/v1/redemptions",
        json={"coupon_code": code[:-1] + ("A" if code[-1] != "A" else "B")},
        headers=h,
    )
    assert forged.status_code == 404
    assert (
        c.post("/v1/redemptions", json={"coupon_code": code}, headers=any_api.sdk).status_code
        == 403
    )


def test_expired_coupon_is_410(any_api: Api) -> None:
    setup(any_api, "campaigns:\n" + campaign())
    code = ping(any_api)["offer"]["coupon_code"]
    engine = any_api.app_state.engine
    from sqlalchemy import text

    with engine.begin() as conn:
        conn.execute(
            text("UPDATE offers SET expires_at = :t"),
            {"t": datetime.now(UTC) - timedelta(minutes=1)},
        )
    r = any_api.client.post("/v1/redemptions", json={"coupon_code": code}, headers=any_api.server)
    assert r.status_code == 410 and r.json()["error"]["code"] == "expired"


def test_bad_campaign_files_are_422_and_write_nothing(any_api: Api) -> None:
    setup(any_api, "campaigns:\n" + campaign())
    bad = (
        "campaigns:\n"
        + campaign("x1", budgett="{total: 5}")
        + campaign("x2", caps="[{count: 1, window: 25hrs}]")
        + campaign("x3", audience="{include: [{field: tier, op: contains, value: gold}]}")
    )
    r = any_api.client.post(
        "/v1/campaigns/import", files={"file": ("c.yaml", bad.encode())}, headers=any_api.admin
    )
    assert r.status_code == 422, r.text
    details = r.json()["error"]["details"]
    assert {d["campaign"] for d in details} == {"x1", "x2", "x3"}
    listed = any_api.client.get("/v1/campaigns", headers=any_api.admin).json()["items"]
    assert [c["id"] for c in listed] == ["latte"]


def test_consent_withdrawn_stops_processing(any_api: Api) -> None:
    setup(any_api, "campaigns:\n" + campaign())
    any_api.client.patch(
        "/v1/users/private", json={"location_consent": False}, headers=any_api.server
    )
    answer = ping(any_api, user="private")
    assert answer == {
        "ping_id": answer["ping_id"],
        "events": [],
        "offer": None,
        "reason": "consent_denied",
    }
    any_api.client.patch(
        "/v1/users/private", json={"location_consent": True}, headers=any_api.server
    )
    assert ping(any_api, user="private")["reason"] == "offer_issued"


def test_explain_needs_admin(any_api: Api) -> None:
    setup(any_api, "campaigns:\n" + campaign())
    body = {"device_id": "d", "lat": 1, "lng": 1, "accuracy_m": 5, "timestamp": iso(ago(1))}
    r = any_api.client.post(
        "/v1/locations", params={"explain": "true"}, json=body, headers=any_api.sdk
    )
    assert r.status_code == 403


def test_erasure(any_api: Api) -> None:
    setup(any_api, "campaigns:\n" + campaign())
    c = any_api.client
    c.patch("/v1/users/gone", json={"first_name": "Zoe"}, headers=any_api.server)
    assert ping(any_api, user="gone", device="zoe-phone")["offer"]["message"].startswith("Hi Zoe")
    ping(any_api, user="gone", device="zoe-tablet", accuracy_m=500)
    r = c.delete("/v1/users/gone", headers=any_api.admin)
    assert r.status_code == 204
    if any_api.settings.redis_url:  # erasure reaches Redis: device state and cap history
        import redis

        with redis.Redis.from_url(any_api.settings.redis_url) as rc:
            left = [k.decode() for k in rc.scan_iter(match=f"{any_api.settings.redis_prefix}*")]
        assert not [k for k in left if "zoe-" in k or "u:gone" in k], left
    assert c.delete("/v1/users/gone", headers=any_api.admin).status_code == 404
    report = c.get("/v1/campaigns/latte/report", headers=any_api.admin).json()
    assert report["arms"]["treatment"]["issued"] == 1, "aggregates stay"
    # The device comes back as new: its next ping is an enter again.
    assert [e["type"] for e in ping(any_api, user=None, device="zoe-phone")["events"]] == ["enter"]


@pytest.mark.parametrize("budget", [5])
def test_budget_total(any_api: Api, budget: int) -> None:
    setup(any_api, "campaigns:\n" + campaign(budget=f"{{total: {budget}}}"))
    reasons = [ping(any_api, user=f"b-{i}")["reason"] for i in range(budget + 3)]
    assert reasons.count("offer_issued") == budget
    assert reasons[budget:] == ["budget_exhausted"] * 3


def test_event_retry_with_the_same_id_is_recorded_once(any_api: Api) -> None:
    body = {"type": "purchase", "occurred_at": iso(ago(10)), "event_id": "pos-123"}
    first = any_api.client.post("/v1/users/u/events", json=body, headers=any_api.server)
    again = any_api.client.post("/v1/users/u/events", json=body, headers=any_api.server)
    assert first.status_code == again.status_code == 201
    assert (first.json()["duplicate"], again.json()["duplicate"]) == (False, True)
    future = {"type": "purchase", "occurred_at": iso(ago(-3600))}
    assert (
        any_api.client.post("/v1/users/u/events", json=future, headers=any_api.server).status_code
        == 422
    )


def test_report_arithmetic_against_a_hand_computed_case(api: Api) -> None:
    """Treatment 40 exposed / 12 converted, control 10 / 1, by writing rows directly."""
    setup(api, "campaigns:\n" + campaign())
    from sqlalchemy import text

    t0 = datetime.now(UTC) - timedelta(days=2)
    with api.app_state.engine.begin() as conn:
        for i in range(50):
            arm = "treatment" if i < 40 else "control"
            conn.execute(
                text("INSERT INTO exposures VALUES ('latte', :u, :arm, :t, 'nyc-1')"),
                {"u": f"r-{i}", "arm": arm, "t": t0},
            )
        converted = [f"r-{i}" for i in range(12)] + ["r-40"]
        late = ["r-12"]  # a purchase after the 72 h window does not count
        early = ["r-13"]  # nor one before the exposure
        for u, dt in (
            [(u, timedelta(hours=5)) for u in converted]
            + [(u, timedelta(hours=80)) for u in late]
            + [(u, timedelta(hours=-1)) for u in early]
        ):
            conn.execute(
                text(
                    "INSERT INTO user_events (id, user_id, type, occurred_at, properties) VALUES (:id, :u, 'purchase', :t, '{}')"
                ),
                {"id": f"e-{u}-{dt.total_seconds()}", "u": u, "t": t0 + dt},
            )
    report = api.client.get("/v1/campaigns/latte/report", headers=api.admin).json()
    t, c = report["arms"]["treatment"], report["arms"]["control"]
    assert (t["exposed"], t["converted"], c["exposed"], c["converted"]) == (40, 12, 10, 1)
    assert t["conversion_rate"] == 0.3 and c["conversion_rate"] == 0.1
    # diff 0.2, se = sqrt(.3*.7/40 + .1*.9/10) = sqrt(0.00525 + 0.009) = 0.119373...
    assert report["lift"]["absolute"] == 0.2
    assert report["lift"]["ci95_low"] == round(0.2 - 1.959963984540054 * 0.1193733639, 6)
    assert report["lift"]["ci95_high"] == round(0.2 + 1.959963984540054 * 0.1193733639, 6)
    assert report["lift"]["relative"] == 2.0


def test_dwell_campaign_fires_once_when_its_dwell_is_reached(any_api: Api) -> None:
    setup(any_api, "campaigns:\n" + campaign("linger", trigger="{type: dwell, dwell_s: 120}"))
    t0 = datetime.now(UTC) - timedelta(seconds=200)

    def at(seconds: float) -> dict[str, Any]:
        body = {"device_id": "dweller", "user_id": "dweller", "lat": 40.74172, "lng": -73.98964,
                "accuracy_m": 5, "timestamp": iso(t0 + timedelta(seconds=seconds))}  # fmt: skip
        r = any_api.client.post(
            "/v1/locations", json=body, headers=any_api.admin, params={"explain": True}
        )
        return r.json()

    enter = at(0)  # the enter: this campaign waits for its dwell
    assert [e["type"] for e in enter["events"]] == ["enter"] and enter["reason"] == "no_trigger"
    assert at(60)["reason"] == "no_trigger"  # inside, 60 s: nothing can fire yet
    fired = at(130)
    assert fired["reason"] == "offer_issued" and fired["offer"]["campaign_id"] == "linger"
    assert at(180)["reason"] == "no_trigger", "once per visit"


def test_consent_withdrawn_mid_visit_drops_the_state(any_api: Api) -> None:
    setup(any_api, "campaigns:\n" + campaign())
    first = ping(any_api, user="walker", device="walker-phone")
    assert [e["type"] for e in first["events"]] == ["enter"]
    any_api.client.patch(
        "/v1/users/walker", json={"location_consent": False}, headers=any_api.server
    )
    denied = ping(any_api, user="walker", device="walker-phone")
    assert denied["reason"] == "consent_denied" and denied["events"] == []
    if any_api.settings.redis_url:
        import redis

        with redis.Redis.from_url(any_api.settings.redis_url) as rc:
            assert rc.get(f"{device_key(any_api.settings, 'walker-phone')}:state") is None
    any_api.client.patch(
        "/v1/users/walker", json={"location_consent": True}, headers=any_api.server
    )
    again = ping(any_api, user="walker", device="walker-phone")
    assert [e["type"] for e in again["events"]] == ["enter"], "the old visit was forgotten"
