"""Trust (DESIGN §11) through real pings: on PostGIS + Redis across two replicas (two apps on
the same database and Redis, each with its own clients and cache of device states, as two
processes would have), and on the embedded default.

A campaign that checks trust (``guarded``) refuses a spoofed ping with
``suspected_spoofing`` and the check named in ``explain``; one that opts out (``loose``,
only at one LA store) still issues; the visits are recorded either way.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import re
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
import redis

from service.reasons import Reason
from service.settings import Settings
from service.trust import TrustCheck
from tests.helpers import ago, iso
from tests.service.conftest import Api, _make_api

NYC = (40.74172, -73.98964)  # Flatiron
TIMES_SQUARE = (40.75800, -73.98550)  # 2 km up Broadway: a taxi ride
NY_OUT = (40.74986, -73.98757)  # half-way between them: in no store
LA_1 = (34.05220, -118.24370)
LA_2 = (34.05620, -118.24370)  # 450 m north of LA_1
LA_3 = (34.04820, -118.24370)  # 450 m south of LA_1
LA_OUT = (34.04400, -118.24370)  # 900 m south of LA_1: in no store
STORES = (
    b"store_id,name,lat,lng,radius_m\n"
    b"nyc,Flatiron,40.74172,-73.98964,50\n"
    b"nyc-2,Times Square,40.758,-73.9855,50\n"
    b"la-1,Downtown LA,34.0522,-118.2437,50\n"
    b"la-2,Bunker Hill,34.0562,-118.2437,50\n"
    b"la-3,South Park,34.0482,-118.2437,50\n"
)
OFFER = "{title: T, message: Hi, value: 5}"
CAMPAIGNS = f"""campaigns:
  - id: guarded
    priority: 2
    trigger: {{type: enter}}
    offer: {OFFER}
  - id: loose
    trust_checks: false
    trigger: {{type: enter}}
    targeting: {{store_ids: [la-3]}}
    offer: {OFFER}
"""
_ids = itertools.count()


class Replica:
    """One app; ``ping`` posts one ping (with ``explain``, so the decisions show)."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self.calls = 0
        store = api.app_state.state_store
        call = getattr(store, "_call", None)
        if call is not None:  # Redis: count the state store's round trips

            async def counting(*args: Any) -> Any:
                self.calls += 1
                return await call(*args)

            store._call = counting

    def ping(
        self, at: tuple[float, float], ts: datetime, device: str, **extra: Any
    ) -> dict[str, Any]:
        body = {"device_id": device, "lat": at[0], "lng": at[1], "accuracy_m": 10.0}
        body.update(timestamp=iso(ts), **extra)
        self.calls = 0
        r = self.api.client.post(
            "/v1/locations", params={"explain": "true"}, json=body, headers=self.api.admin
        )
        assert r.status_code == 200, r.text
        return dict(r.json())


def _setup(api: Api) -> None:
    c = api.client
    r = c.post("/v1/geofences/import", files={"file": ("s.csv", STORES)}, headers=api.admin)
    assert r.status_code == 200, r.text
    files = {"file": ("c.yaml", io.BytesIO(CAMPAIGNS.encode()))}
    r = c.post("/v1/campaigns/import", files=files, headers=api.admin)
    assert r.status_code == 200, r.text


@pytest.fixture
def replicas(pg_settings: Settings) -> Iterator[tuple[Replica, Replica]]:
    with contextlib.ExitStack() as stack:
        a = stack.enter_context(contextlib.contextmanager(_make_api)(pg_settings))
        _setup(a)
        b = stack.enter_context(contextlib.contextmanager(_make_api)(pg_settings))
        yield Replica(a), Replica(b)


@pytest.fixture
def embedded(embedded_api: Api) -> Replica:
    _setup(embedded_api)
    return Replica(embedded_api)


def device() -> str:
    return f"phone-{next(_ids)}"


def decisions(answer: dict[str, Any]) -> dict[str, tuple[str, str | None]]:
    return {d["campaign_id"]: (d["reason"], d.get("check")) for d in answer["decisions"]}


def refused(answer: dict[str, Any], check: TrustCheck) -> bool:
    return (
        answer["reason"] == Reason.SUSPECTED_SPOOFING
        and answer["offer"] is None
        and decisions(answer)["guarded"] == (Reason.SUSPECTED_SPOOFING, check)
    )


def suspected(replica: Replica, check: TrustCheck) -> float:
    text = replica.api.client.get("/metrics").text
    found = re.search(rf'^geo_offers_trust_suspected_total{{check="{check}"}} (\S+)$', text, re.M)
    assert found, "every check is on /metrics from the start"
    return float(found.group(1))


def entered(answer: dict[str, Any]) -> list[str]:
    return [e["store_id"] for e in answer["events"] if e["type"] == "enter"]


# -- PostGIS + Redis, two replicas ------------------------------------------------------------


def test_a_mocked_ping_is_refused_by_campaigns_that_check_trust(
    replicas: tuple[Replica, Replica],
) -> None:
    a, b = replicas
    before = suspected(a, TrustCheck.mocked_location)
    mocked = a.ping(NYC, ago(5), device(), mocked=True)
    assert refused(mocked, TrustCheck.mocked_location) and entered(mocked) == ["nyc"]
    assert suspected(b, TrustCheck.mocked_location) == before + 1
    # Where the opted-out campaign runs, it still issues; explain names the refusal.
    at_la = b.ping(LA_3, ago(5), device(), mocked=True)
    assert at_la["reason"] == Reason.OFFER_ISSUED and at_la["offer"]["campaign_id"] == "loose"
    assert decisions(at_la) == {
        "guarded": (Reason.SUSPECTED_SPOOFING, TrustCheck.mocked_location),
        "loose": (Reason.OFFER_ISSUED, None),
    }
    plain = a.ping(NYC, ago(5), device(), mocked=False)
    assert plain["reason"] == Reason.OFFER_ISSUED


def test_new_york_to_los_angeles_in_a_minute_is_refused_until_a_plausible_ping(
    replicas: tuple[Replica, Replica],
) -> None:
    a, b = replicas
    phone = device()
    before = suspected(a, TrustCheck.impossible_travel)
    assert a.ping(NYC, ago(240), phone)["reason"] == Reason.OFFER_ISSUED
    jump = b.ping(LA_1, ago(180), phone)
    assert refused(jump, TrustCheck.impossible_travel)
    assert entered(jump) == ["la-1"], "the visit is recorded all the same"
    # Still in LA: judged against the last *accepted* fix (New York), still refused.
    again = a.ping(LA_2, ago(150), phone)
    assert refused(again, TrustCheck.impossible_travel) and entered(again) == ["la-2"]
    assert suspected(b, TrustCheck.impossible_travel) == before + 2
    # Back in New York a taxi ride from the last accepted fix: plausible, an offer again.
    back = b.ping(TIMES_SQUARE, ago(60), phone)
    assert back["reason"] == Reason.OFFER_ISSUED and entered(back) == ["nyc-2"]


def test_fixes_outside_any_store_are_judged_in_one_round_trip(
    replicas: tuple[Replica, Replica],
) -> None:
    """Pings in no store take the state script's idle path on any replica (one round trip):
    the script judges their fix itself, with the same rule."""
    a, b = replicas
    phone = device()
    assert a.ping(NY_OUT, ago(240), phone)["reason"] == Reason.NO_TRIGGER
    outside = b.ping(LA_OUT, ago(180), phone)  # the jump, where no campaign could fire
    assert outside["reason"] == Reason.NO_TRIGGER and b.calls == 1
    # Not laundered: New York is still the last accepted fix.
    assert refused(a.ping(LA_1, ago(120), phone), TrustCheck.impossible_travel)
    # A plausible fix is taken: after Los Angeles, New York a minute later is the jump.
    flyer = device()
    a.ping(NY_OUT, ago(5 * 3600), flyer)
    assert b.ping(LA_OUT, ago(200), flyer)["reason"] == Reason.NO_TRIGGER and b.calls == 1
    assert refused(a.ping(NYC, ago(100), flyer), TrustCheck.impossible_travel)


def test_the_real_flight_and_a_taxi_ride_are_fine(replicas: tuple[Replica, Replica]) -> None:
    a, b = replicas
    flyer = device()
    # New York five hours ago (too old for an offer, but its fix is accepted)...
    assert a.ping(NYC, ago(5 * 3600), flyer)["reason"] == Reason.STALE_PING
    # ...and Los Angeles now: about 790 km/h.
    landed = b.ping(LA_1, ago(5), flyer)
    assert landed["reason"] == Reason.OFFER_ISSUED and landed["offer"]["campaign_id"] == "guarded"
    rider = device()
    a.ping(NYC, ago(15 * 60), rider)  # 2 km in 15 minutes, through the streets
    a.ping(NY_OUT, ago(8 * 60), rider)
    ride = b.ping(TIMES_SQUARE, ago(5), rider)
    assert ride["reason"] == Reason.OFFER_ISSUED and ride["offer"]["campaign_id"] == "guarded"


def test_six_devices_for_one_user_are_refused(replicas: tuple[Replica, Replica]) -> None:
    before = suspected(replicas[0], TrustCheck.devices_per_user)
    for i in range(5):
        answer = replicas[i % 2].ping(NYC, ago(60 - i), device(), user_id="shared-account")
        assert answer["reason"] == Reason.OFFER_ISSUED, answer
    sixth = replicas[1].ping(NYC, ago(50), device(), user_id="shared-account")
    assert refused(sixth, TrustCheck.devices_per_user) and entered(sixth) == ["nyc"]
    assert suspected(replicas[0], TrustCheck.devices_per_user) == before + 1
    alone = replicas[0].ping(NYC, ago(40), device(), user_id="own-account")
    assert alone["reason"] == Reason.OFFER_ISSUED


def test_six_users_on_one_device_are_refused(replicas: tuple[Replica, Replica]) -> None:
    kiosk = device()
    stores = (NYC, TIMES_SQUARE)  # 2 km apart, 20 s between pings: each ping enters one
    for i in range(5):
        answer = replicas[i % 2].ping(stores[i % 2], ago(200 - 20 * i), kiosk, user_id=f"k-{i}")
        assert answer["reason"] == Reason.OFFER_ISSUED, answer
    sixth = replicas[1].ping(stores[1], ago(80), kiosk, user_id="k-5")
    assert refused(sixth, TrustCheck.users_per_device)


def test_erasure_forgets_the_users_trust_data(replicas: tuple[Replica, Replica]) -> None:
    a, _ = replicas
    phones = [device() for _ in range(5)]
    for i, phone in enumerate(phones):
        assert a.ping(NYC, ago(60 - i), phone, user_id="leaving")["reason"] == (Reason.OFFER_ISSUED)
    api = a.api
    assert api.client.delete("/v1/users/leaving", headers=api.admin).status_code == 204
    assert not _trust_keys(api, "leaving") and not any(_trust_keys(api, p) for p in phones)
    # Counted afresh: five more devices are fine.
    for i in range(5):
        answer = a.ping(NYC, ago(40 - i), device(), user_id="leaving")
        assert answer["reason"] == Reason.OFFER_ISSUED, answer


def _trust_keys(api: Api, needle: str) -> list[bytes]:
    with redis.Redis.from_url(api.settings.redis_url or "") as rc:
        found = rc.scan_iter(match=f"{api.settings.redis_prefix}:*{needle}*")
        return [k for k in found if b":trust:" in k]


# -- the embedded default (in-process state) ------------------------------------------------


def test_embedded_mocked_and_impossible_travel(embedded: Replica) -> None:
    assert refused(embedded.ping(NYC, ago(5), device(), mocked=True), TrustCheck.mocked_location)
    phone = device()
    assert embedded.ping(NYC, ago(240), phone)["reason"] == Reason.OFFER_ISSUED
    assert embedded.ping(LA_OUT, ago(180), phone)["reason"] == Reason.NO_TRIGGER
    assert refused(embedded.ping(LA_1, ago(120), phone), TrustCheck.impossible_travel)
    assert refused(embedded.ping(LA_2, ago(90), phone), TrustCheck.impossible_travel)
    assert embedded.ping(TIMES_SQUARE, ago(60), phone)["reason"] == Reason.OFFER_ISSUED
