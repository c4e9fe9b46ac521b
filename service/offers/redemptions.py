"""Redemptions: a coupon redeems once, concurrently safe, with Idempotency-Key replays.

The redemption row's primary key is the offer id, so two tills redeeming one code at the
same moment race on an INSERT: exactly one row is written, the other till gets 409 with
the first redemption's time.
"""

from __future__ import annotations

import hmac
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine

from service.errors import Conflict, DomainError, InvalidInput, NotFound
from service.events import log as event_log
from service.events.types import offer_redeemed
from service.offers import repository as repo
from service.timeutil import aware, iso_z


class Gone(DomainError):
    status_code = 410
    code = "expired"


def redeem(
    engine: Engine,
    code: str,
    *,
    store_id: str | None,
    amount: float | None,
    user_id: str | None,
    idempotency_key: str | None,
    now: datetime | None = None,
) -> dict[str, Any]:
    now = now or datetime.now(UTC)
    with engine.begin() as conn:
        if idempotency_key:
            prior = repo.redemption_by_key(conn, idempotency_key)
            if prior is not None:
                if prior.coupon_code != code:
                    raise Conflict(
                        "this Idempotency-Key was used for another coupon code",
                        [{"field": "Idempotency-Key", "reason": "reused with a different body"}],
                    )
                return dict(prior.response)
        offers = repo.find_offers_by_code(conn, code)
        # Compare in constant time so response timing does not leak how close a forged
        # code is (the lookup itself is an indexed equality, not a prefix scan).
        offers = [o for o in offers if hmac.compare_digest(o.coupon_code, code)]
        if not offers:
            raise NotFound("unknown coupon code")
        if offers[0].fixed_code:
            if not user_id:
                raise InvalidInput(
                    f"{code} is a campaign's shared code: send the user_id it was issued to",
                    [{"field": "user_id", "reason": "required for a shared code"}],
                )
            offers = [o for o in offers if o.user_key == user_id]
            if not offers:
                raise NotFound("this shared code was not issued to this user")
            open_offers = [o for o in offers if repo.redemption_of(conn, o.offer_id) is None]
            offers = sorted(open_offers or offers, key=lambda o: aware(o.issued_at))
        offer = offers[0]
        done = repo.redemption_of(conn, offer.offer_id)
        if done is not None:
            raise Conflict(
                f"coupon already redeemed at {iso_z(done.redeemed_at)}",
                [
                    {
                        "field": "coupon_code",
                        "reason": "already_redeemed",
                        "redeemed_at": iso_z(done.redeemed_at),
                    }
                ],
            )
        if aware(offer.expires_at) <= now:
            raise Gone(f"coupon expired at {iso_z(offer.expires_at)}")
        response = {
            "offer_id": offer.offer_id,
            "campaign_id": offer.campaign_id,
            "coupon_code": code,
            "redeemed_at": iso_z(now),
            "store_id": store_id,
            "amount": amount,
        }
        row = {
            "offer_id": offer.offer_id,
            "coupon_code": code,
            "campaign_id": offer.campaign_id,
            "redeemed_at": now,
            "store_id": store_id,
            "amount": amount,
            "idempotency_key": idempotency_key,
            "response": response,
        }
        if not repo.insert_redemption(conn, row):
            # Another till won the race between our check and our insert.
            conn.rollback()
            with engine.connect() as again:
                if idempotency_key:
                    replay = repo.redemption_by_key(again, idempotency_key)
                    if replay is not None and replay.coupon_code == code:
                        return dict(replay.response)
                done = repo.redemption_of(again, offer.offer_id)
            at = iso_z(done.redeemed_at) if done is not None else "just now"
            raise Conflict(
                f"coupon already redeemed at {at}",
                [{"field": "coupon_code", "reason": "already_redeemed", "redeemed_at": at}],
            )
        # offer.redeemed, committed with the redemption row or not at all.
        event = offer_redeemed(
            offer_id=offer.offer_id,
            campaign_id=offer.campaign_id,
            coupon_code=code,
            store_id=offer.store_id,
            device_id=offer.device_id,
            # user_key is the ping's user_id, or its device id when it had none
            user_id=offer.user_key if offer.user_key != offer.device_id else None,
            amount=amount,
            redeemed_store_id=store_id,
            redeemed_at=now,
            store_tags=event_log.store_tags(conn, offer.store_id),
        )
        event_log.record(conn, [event])
    return response
