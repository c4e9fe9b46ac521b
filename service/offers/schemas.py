"""Bodies of the redemption endpoint."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field

from service.limits import MAX_NUMBER, identifier

CouponCode = Annotated[str, identifier(96)]
StoreId = Annotated[str, identifier(128)]


class RedemptionIn(BaseModel):
    coupon_code: CouponCode
    store_id: StoreId | None = None
    amount: float | None = Field(
        default=None, ge=0, le=MAX_NUMBER, allow_inf_nan=False, strict=True
    )  # strict: true is not 1.0
    user_id: Annotated[str, identifier(128)] | None = Field(
        default=None, description="Needed only for a campaign's shared code."
    )


class RedemptionOut(BaseModel):
    offer_id: str
    campaign_id: str
    coupon_code: str
    redeemed_at: str
    store_id: str | None
    amount: float | None
