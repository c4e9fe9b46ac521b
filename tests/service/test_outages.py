"""The outage matrix (README, "Outages"): Redis down and PostgreSQL down, against every route
group. Each route does all of its work or none: a 200 it can give without the dependency,
a 503 ``unavailable`` with ``Retry-After`` and nothing written, or (an erasure while Redis
is down) a 202 that completes by itself when Redis is back.

Real servers of the test's own are stopped and restarted (``test_faults``); the machine's
shared PostgreSQL and Redis are never touched.
"""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import psycopg
import redis

from service.settings import Settings
from tests.helpers import ago, iso
from tests.service.conftest import Api, _make_api, _reset_postgis
from tests.service.test_faults import OwnPostgres, OwnRedis, own_postgres, own_redis  # noqa: F401

STORE = (48.8593, 2.3618)
STORES = b"store_id,name,lat,lng\nf-1,Cafe,48.8593,2.3618\n"
MORE_STORES = b"store_id,name,lat,lng\nf-2,Bakery,48.8600,2.3500\n"
CAMPAIGNS = b"""campaigns:
  - id: hello
    trigger: {type: enter}
    offer: {title: Hello, message: "Hi {{ first_name | default: 'there' }}"}
"""


def _ping(device: str, user: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"device_id": device, "lat": STORE[0], "lng": STORE[1]}
    body |= {"accuracy_m": 5, "timestamp": iso(ago(1))}
    return body | ({"user_id": user} if user else {})


def _setup(api: Api) -> dict[str, Any]:
    """A store, a campaign, a user with an attribute and an event, and an issued coupon."""
    c, admin, server = api.client, api.admin, api.server
    r = c.post("/v1/geofences/import", files={"file": ("s.csv", STORES)}, headers=admin)
    assert r.status_code == 200, r.text
    r = c.post("/v1/campaigns/import", files={"file": ("c.yaml", CAMPAIGNS)}, headers=admin)
    assert r.status_code == 200, r.text
    assert c.patch("/v1/users/ada", json={"first_name": "Ada"}, headers=server).status_code == 200
    event = {"type": "signup", "occurred_at": iso(ago(3600))}
    assert c.post("/v1/users/ada/events", json=event, headers=server).status_code == 201
    r = c.post("/v1/locations", json=_ping("ada-phone", "ada"), headers=api.sdk)
    assert r.status_code == 200 and r.json()["reason"] == "offer_issued", r.text
    coupon = r.json()["offer"]["coupon_code"]
    r = c.post("/v1/locations", json=_ping("bob-phone", "bob"), headers=api.sdk)
    assert r.json()["reason"] == "offer_issued", r.text
    return {"coupon": coupon, "bob_coupon": r.json()["offer"]["coupon_code"]}


def _unavailable(r: httpx.Response) -> None:
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "unavailable", r.text
    assert int(r.headers["retry-after"]) > 0


def _eventually(check: Callable[[], bool], timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "did not happen in time"
        time.sleep(0.2)


def _attributes(pg_url: str, user_id: str) -> dict[str, Any] | None:
    with psycopg.connect(pg_url) as conn:
        row = conn.execute("SELECT attributes FROM users WHERE user_id = %s", (user_id,)).fetchone()
    return None if row is None else dict(row[0])


def _redis_keys(url: str, prefix: str, needle: str) -> list[str]:
    with redis.Redis.from_url(url) as rc:
        return [k.decode() for k in rc.scan_iter(match=f"{prefix}*") if needle in k.decode()]


def test_redis_down_against_every_route_group(
    own_redis: OwnRedis,  # noqa: F811
    migrated_postgis: str,
) -> None:
    _reset_postgis(migrated_postgis)
    prefix = f"outage-{uuid.uuid4().hex[:8]}"
    settings = Settings(
        database_url=migrated_postgis, redis_url=own_redis.url, redis_prefix=prefix,
        erasure_retry_s=0.3,
    )  # fmt: skip
    for api in _make_api(settings):
        _redis_matrix(api, own_redis, migrated_postgis, prefix)
    _reset_postgis(migrated_postgis)


def _redis_matrix(api: Api, own_redis: OwnRedis, pg_url: str, prefix: str) -> None:  # noqa: F811
    migrated_postgis = pg_url
    if True:
        c, admin, server, sdk = api.client, api.admin, api.server, api.sdk
        seed = _setup(api)
        assert _redis_keys(own_redis.url, prefix, "ada-phone"), "the device has state"
        redis.Redis(port=own_redis.port).save()  # so that it comes back with its data
        own_redis.stop()

        # pings and batches: 200, no events, no offer (never a coupon Redis did not count)
        r = c.post("/v1/locations", json=_ping("p-1", "carol"), headers=sdk)
        assert r.status_code == 200 and r.json()["reason"] == "state_unavailable", r.text
        batch = {"pings": [_ping("p-2"), _ping("p-2") | {"timestamp": iso(ago(0.5))}]}
        r = c.post("/v1/locations/batch", json=batch, headers=sdk)
        assert r.status_code == 200, r.text
        assert {x["reason"] for x in r.json()["results"]} == {"state_unavailable"}
        # imports, campaigns, reports, redemptions, events, attributes: the database's alone
        files = {"file": ("s.csv", MORE_STORES)}
        assert c.post("/v1/geofences/import", files=files, headers=admin).status_code == 200
        files = {"file": ("c.yaml", CAMPAIGNS)}
        assert c.post("/v1/campaigns/import", files=files, headers=admin).status_code == 200
        assert c.get("/v1/campaigns", headers=admin).status_code == 200
        r = c.patch("/v1/campaigns/hello", json={"status": "active"}, headers=admin)
        assert r.status_code == 200, r.text
        assert c.get("/v1/campaigns/hello/report", headers=admin).status_code == 200
        r = c.post("/v1/redemptions", json={"coupon_code": seed["bob_coupon"]}, headers=server)
        assert r.status_code == 200, r.text
        event = {"type": "purchase", "occurred_at": iso(ago(5))}
        assert c.post("/v1/users/bob/events", json=event, headers=server).status_code == 201
        r = c.patch("/v1/users/bob", json={"loyalty_tier": "gold"}, headers=server)
        assert r.status_code == 200, r.text
        # keys are the database's too: a key created now works at once
        from service.auth import Role, create_key

        fresh = create_key(api.app_state.engine, Role.admin, "during")
        r = c.get("/v1/geofences", headers={"Authorization": f"Bearer {fresh}"})
        assert r.status_code == 200, r.text

        # consent: Redis must take the change, so nothing is written without it
        r = c.patch("/v1/users/bob", json={"location_consent": False}, headers=server)
        _unavailable(r)
        assert _attributes(migrated_postgis, "bob") == {"loyalty_tier": "gold"}, "not written"

        # erasure: the database part now, the rest by itself; its status is readable
        r = c.delete("/v1/users/ada", headers=admin)
        assert r.status_code == 202, r.text
        assert r.headers["location"] == "/v1/users/ada/erasure"
        assert r.json()["status"] == "pending" and r.json()["user_id"] == "ada"
        assert _attributes(migrated_postgis, "ada") is None, "the database part is done"
        status = c.get("/v1/users/ada/erasure", headers=admin).json()
        assert status["status"] == "pending" and status["last_error"], status
        metrics = c.get("/metrics").text
        assert "geo_offers_erasures_pending 1.0" in metrics
        assert c.get("/readyz").status_code == 503

        own_redis.start()  # same port, with the data saved before the outage
        # Redis came back with its data (bob's device); ada's is for the pending erasure
        assert _redis_keys(own_redis.url, prefix, "bob-phone"), "Redis came back with its data"
        _eventually(
            lambda: c.get("/v1/users/ada/erasure", headers=admin).json()["status"] == "done"
        )
        assert not _redis_keys(own_redis.url, prefix, "ada-phone"), "device state erased"
        assert not _redis_keys(own_redis.url, prefix, "u:ada}"), "cap history and links erased"
        done = c.get("/v1/users/ada/erasure", headers=admin).json()
        assert done["completed_at"] and done["attempts"] >= 2 and done["last_error"] is None
        _eventually(lambda: "geo_offers_erasures_pending 0.0" in c.get("/metrics").text)
        # and consent now goes through, both places
        r = c.patch("/v1/users/bob", json={"location_consent": False}, headers=server)
        assert r.status_code == 200, r.text
        r = c.post("/v1/locations", json=_ping("bob-phone", "bob"), headers=sdk)
        assert r.json()["reason"] == "consent_denied", r.text


def test_postgres_down_against_every_route_group(
    own_postgres: OwnPostgres,  # noqa: F811
    redis_url: str,
    redis_prefix: str,
) -> None:
    settings = Settings(
        database_url=own_postgres.url, redis_url=redis_url, redis_prefix=redis_prefix,
        erasure_retry_s=0.3,
    )  # fmt: skip
    for api in _make_api(settings):
        _postgres_matrix(api, own_postgres)


def _postgres_matrix(api: Api, own_postgres: OwnPostgres) -> None:  # noqa: F811
    if True:
        c, admin, server, sdk = api.client, api.admin, api.server, api.sdk
        seed = _setup(api)
        own_postgres.stop()

        # pings and batches: matching goes on from the index; no offer without the database
        r = c.post("/v1/locations", json=_ping("p-1", "carol"), headers=sdk)
        assert r.status_code == 200, r.text
        assert [e["type"] for e in r.json()["events"]] == ["enter"]
        assert r.json()["offer"] is None and r.json()["reason"] == "unavailable"
        batch = {"pings": [_ping("p-2"), _ping("p-2") | {"timestamp": iso(ago(0.5))}]}
        r = c.post("/v1/locations/batch", json=batch, headers=sdk)
        assert r.status_code == 200, r.text
        # every other route group: 503 unavailable with Retry-After, nothing written
        files = {"file": ("s.csv", MORE_STORES)}
        _unavailable(c.post("/v1/geofences/import", files=files, headers=admin))
        _unavailable(c.get("/v1/geofences", headers=admin))
        files = {"file": ("c.yaml", CAMPAIGNS)}
        _unavailable(c.post("/v1/campaigns/import", files=files, headers=admin))
        _unavailable(c.get("/v1/campaigns", headers=admin))
        _unavailable(c.patch("/v1/campaigns/hello", json={"status": "paused"}, headers=admin))
        _unavailable(c.get("/v1/campaigns/hello/report", headers=admin))
        _unavailable(
            c.post("/v1/redemptions", json={"coupon_code": seed["coupon"]}, headers=server)
        )
        event = {"type": "purchase", "occurred_at": iso(ago(5))}
        _unavailable(c.post("/v1/users/ada/events", json=event, headers=server))
        _unavailable(c.patch("/v1/users/ada", json={"first_name": "Eve"}, headers=server))
        _unavailable(c.patch("/v1/users/ada", json={"location_consent": False}, headers=server))
        _unavailable(c.delete("/v1/users/ada", headers=admin))
        _unavailable(c.get("/v1/users/ada/erasure", headers=admin))
        # keys: the ones seen before keep working (cached); an unknown one cannot be checked
        unknown = {"Authorization": f"Bearer go_admin_{secrets.token_urlsafe(32)}"}
        _unavailable(c.get("/v1/campaigns", headers=unknown))
        ready = c.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["database"] is False

        own_postgres.start()
        _eventually(lambda: c.get("/v1/geofences", headers=admin).status_code == 200)
        # nothing of the refused requests was written
        assert c.get("/v1/geofences/f-2", headers=admin).status_code == 404
        assert c.get("/v1/campaigns/hello", headers=admin).json()["status"] == "active"
        assert _attributes(own_postgres.url, "ada") == {"first_name": "Ada"}
        assert c.get("/v1/users/ada/erasure", headers=admin).status_code == 404
        r = c.post("/v1/redemptions", json={"coupon_code": seed["coupon"]}, headers=server)
        assert r.status_code == 200, "the refused redemption did not count"
        r = c.post("/v1/locations", json=_ping("ada-phone", "ada"), headers=sdk)
        assert r.status_code == 200 and r.json()["reason"] != "consent_denied"
        # and everything works again by itself
        assert c.delete("/v1/users/ada", headers=admin).status_code == 204
        assert c.get("/v1/users/ada/erasure", headers=admin).json()["status"] == "done"


def test_consent_denials_survive_a_redis_that_comes_back_empty(
    own_redis: OwnRedis,  # noqa: F811
    migrated_postgis: str,
) -> None:
    # Redis without persistence loses the consent flags on a restart; the database keeps
    # the truth and every replica refills them, or a user who said no would get offers.
    _reset_postgis(migrated_postgis)
    prefix = f"consent-{uuid.uuid4().hex[:8]}"
    settings = Settings(
        database_url=migrated_postgis, redis_url=own_redis.url, redis_prefix=prefix,
        erasure_retry_s=0.3,
    )  # fmt: skip
    for api in _make_api(settings):
        _consent_after_restart(api, own_redis)
    _reset_postgis(migrated_postgis)


def _consent_after_restart(api: Api, own_redis: OwnRedis) -> None:  # noqa: F811
    c = api.client
    _setup(api)
    r = c.patch("/v1/users/no", json={"location_consent": False}, headers=api.server)
    assert r.status_code == 200, r.text
    assert (
        c.post("/v1/locations", json=_ping("no-1", "no"), headers=api.sdk).json()["reason"]
        == "consent_denied"
    )
    own_redis.stop()
    own_redis.start()  # empty
    _eventually(lambda: bool(_redis_keys(own_redis.url, "", "{denials}:loaded")))
    answer = c.post("/v1/locations", json=_ping("no-2", "no"), headers=api.sdk).json()
    assert answer["reason"] == "consent_denied" and answer["offer"] is None, answer
