"""offer.redeemed is recorded with the redemption, in its transaction: once, or not at all."""

from __future__ import annotations

import concurrent.futures
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select

from service.events import log as event_log
from service.events.types import EventType, event_id
from service.offers import repository as offers_repo
from tests.service.conftest import Api

STORES = (
    b"store_id,name,lat,lng,radius_m,tags\nnyc-1,Flatiron,40.74172,-73.98964,50,downtown;cafe\n"
)


def add_offer(
    api: Api, offer_id: str, code: str, *, expired: bool = False, user: str = "u-1"
) -> None:
    now = datetime.now(UTC)
    row: dict[str, Any] = {
        "offer_id": offer_id, "campaign_id": "latte", "user_key": user, "device_id": "dev-1",
        "store_id": "nyc-1", "channel": "push", "coupon_code": code, "fixed_code": False,
        "title": "20% off", "message": "Hi", "value": 20.0, "distance_m": 3.0, "ping_id": "p-1",
        "issued_at": now - timedelta(hours=3),
        "expires_at": now - timedelta(hours=1) if expired else now + timedelta(hours=1),
    }  # fmt: skip
    with api.app_state.engine.begin() as conn:
        offers_repo.insert_offer(conn, row)


def events(api: Api) -> list[Any]:
    with api.app_state.engine.connect() as conn:
        return conn.execute(select(event_log.EVENTS).order_by(event_log.EVENTS.c.seq)).all()


def test_redemption_records_one_offer_redeemed_event(any_api: Api) -> None:
    api = any_api
    r = api.client.post(
        "/v1/geofences/import", files={"file": ("s.csv", STORES)}, headers=api.admin
    )
    assert r.status_code == 200, r.text
    add_offer(api, "o-1", "LATTE-AAAA")
    add_offer(api, "o-2", "LATTE-BBBB", expired=True)
    add_offer(api, "o-3", "LATTE-CCCC", user="dev-1")  # issued to a ping without a user_id

    body = {"coupon_code": "LATTE-AAAA", "store_id": "nyc-2", "amount": 4.5}
    headers = {**api.server, "Idempotency-Key": "till-7-123"}
    first = api.client.post("/v1/redemptions", json=body, headers=headers)
    assert first.status_code == 200, first.text
    again = api.client.post("/v1/redemptions", json=body, headers=headers)
    assert again.json() == first.json(), "an Idempotency-Key replay"
    twice = api.client.post("/v1/redemptions", json=body, headers=api.server)
    assert twice.status_code == 409
    assert (
        api.client.post(
            "/v1/redemptions", json={"coupon_code": "LATTE-BBBB"}, headers=api.server
        ).status_code
        == 410
    )
    assert (
        api.client.post(
            "/v1/redemptions", json={"coupon_code": "LATTE-CCCC"}, headers=api.server
        ).status_code
        == 200
    )

    rows = events(api)
    assert [r.type for r in rows] == ["offer.redeemed", "offer.redeemed"], "none for 409/410"
    one = event_log.row_event(rows[0])
    assert one.id == event_id(EventType.offer_redeemed, "o-1"), "the offer's identity"
    assert one.envelope()["occurred_at"] == first.json()["redeemed_at"]
    assert one.data == {
        "offer_id": "o-1", "campaign_id": "latte", "coupon_code": "LATTE-AAAA",
        "store_id": "nyc-1", "device_id": "dev-1", "user_id": "u-1", "amount": 4.5,
        "redeemed_store_id": "nyc-2",
    }  # fmt: skip
    assert one.store_tags == ("cafe", "downtown"), "the offer's store's tags, for subscriptions"
    assert rows[1].data["user_id"] is None and rows[1].data["device_id"] == "dev-1"


def test_concurrent_redemptions_of_one_code_record_one_event(api: Api) -> None:
    add_offer(api, "o-9", "LATTE-RACE")

    def redeem(i: int) -> int:
        return api.client.post(
            "/v1/redemptions", json={"coupon_code": "LATTE-RACE"}, headers=api.server
        ).status_code

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(redeem, range(16)))
    assert sorted(codes) == [200] + [409] * 15
    assert [r.type for r in events(api)] == ["offer.redeemed"]
