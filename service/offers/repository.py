"""SQL for issued offers, exposures, redemptions and campaign reports."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Table, and_, func, select
from sqlalchemy.dialects import postgresql, sqlite

from service.db.models import ExposureRow, OfferRow, RedemptionRow, UserEventRow
from service.timeutil import aware

OFFERS: Table = OfferRow.__table__  # type: ignore[assignment]
EXPOSURES: Table = ExposureRow.__table__  # type: ignore[assignment]
REDEMPTIONS: Table = RedemptionRow.__table__  # type: ignore[assignment]
EVENTS: Table = UserEventRow.__table__  # type: ignore[assignment]


def _insert(conn: Connection) -> Any:
    return postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert


def record_exposure(
    conn: Connection, campaign_id: str, user_key: str, arm: str, at: datetime, store_id: str
) -> None:
    """The first exposure of a user to a campaign wins; later ones change nothing."""
    stmt = _insert(conn)(EXPOSURES).values(
        campaign_id=campaign_id, user_key=user_key, arm=arm, first_exposed_at=at, store_id=store_id
    )
    conn.execute(stmt.on_conflict_do_nothing(index_elements=["campaign_id", "user_key"]))


def insert_offer(conn: Connection, row: dict[str, Any]) -> None:
    conn.execute(
        _insert(conn)(OFFERS).values(**row).on_conflict_do_nothing(index_elements=["offer_id"])
    )


def find_offers_by_code(conn: Connection, code: str) -> list[Any]:
    return list(conn.execute(select(OFFERS).where(OFFERS.c.coupon_code == code)))


def redemption_of(conn: Connection, offer_id: str) -> Any:
    return conn.execute(select(REDEMPTIONS).where(REDEMPTIONS.c.offer_id == offer_id)).first()


def redemption_by_key(conn: Connection, key: str) -> Any:
    return conn.execute(select(REDEMPTIONS).where(REDEMPTIONS.c.idempotency_key == key)).first()


def insert_redemption(conn: Connection, row: dict[str, Any]) -> bool:
    """True if this redemption was recorded; False if the offer was redeemed already."""
    # RETURNING, not rowcount: the driver's rowcount for INSERT … ON CONFLICT DO NOTHING
    # is not reliably 0 when nothing was inserted.
    stmt = (
        _insert(conn)(REDEMPTIONS)
        .values(**row)
        .on_conflict_do_nothing()
        .returning(REDEMPTIONS.c.offer_id)
    )
    return conn.execute(stmt).first() is not None


def report_counts(
    conn: Connection, campaign_id: str, attribution: timedelta, conversion_event: str
) -> dict[str, dict[str, int]]:
    """Per arm: exposed users, issued offers, redeemed offers, converted users."""
    arms: dict[str, dict[str, int]] = {
        a: {"exposed": 0, "issued": 0, "redeemed": 0, "converted": 0}
        for a in ("treatment", "control")
    }
    for arm, n in conn.execute(
        select(EXPOSURES.c.arm, func.count())
        .where(EXPOSURES.c.campaign_id == campaign_id)
        .group_by(EXPOSURES.c.arm)
    ):
        arms.setdefault(arm, {"exposed": 0, "issued": 0, "redeemed": 0, "converted": 0})[
            "exposed"
        ] = n
    arms["treatment"]["issued"] = conn.execute(
        select(func.count()).select_from(OFFERS).where(OFFERS.c.campaign_id == campaign_id)
    ).scalar_one()
    arms["treatment"]["redeemed"] = conn.execute(
        select(func.count())
        .select_from(REDEMPTIONS)
        .where(REDEMPTIONS.c.campaign_id == campaign_id)
    ).scalar_one()
    # Converted: a user with a conversion event within the attribution window after their
    # first exposure. Done per row in Python for portability; exposures are per user, so
    # this is one pass over a campaign's exposed users and their matching events.
    exposed = conn.execute(
        select(EXPOSURES.c.user_key, EXPOSURES.c.arm, EXPOSURES.c.first_exposed_at).where(
            EXPOSURES.c.campaign_id == campaign_id
        )
    ).all()
    if exposed:
        rows = conn.execute(
            select(EVENTS.c.user_id, EVENTS.c.occurred_at)
            .select_from(
                EVENTS.join(
                    EXPOSURES,
                    and_(
                        EXPOSURES.c.user_key == EVENTS.c.user_id,
                        EXPOSURES.c.campaign_id == campaign_id,
                    ),
                )
            )
            .where(
                EVENTS.c.type == conversion_event,
                EVENTS.c.occurred_at >= EXPOSURES.c.first_exposed_at,
            )
        ).all()
        first = {u: (arm, aware(at)) for u, arm, at in exposed}
        converted: set[str] = set()
        for user, at in rows:
            arm, start = first[user]
            if start <= aware(at) <= start + attribution:
                converted.add(user)
        for user in converted:
            arms[first[user][0]]["converted"] += 1
    return arms
