"""HTTP for redemptions (server keys)."""

from __future__ import annotations

from typing import Annotated, Any

import anyio.to_thread
from fastapi import APIRouter, Depends, Header, Request
from pydantic import BaseModel, Field

from service.auth import Role
from service.http.auth import require
from service.offers.redemptions import redeem

router = APIRouter(prefix="/v1/redemptions", tags=["redemptions"])
ServerKey = Annotated[Role, Depends(require(Role.server))]


class RedemptionIn(BaseModel):
    coupon_code: str = Field(min_length=1, max_length=96)
    store_id: str | None = Field(default=None, max_length=128)
    amount: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    user_id: str | None = Field(
        default=None, max_length=128, description="Needed only for a campaign's shared code."
    )


@router.post("", summary="Redeem a coupon code once")
async def post_redemption(
    body: RedemptionIn,
    request: Request,
    _: ServerKey,
    idempotency_key: Annotated[str | None, Header(max_length=128)] = None,
) -> dict[str, Any]:
    """200 once; 409 already redeemed (with when); 410 expired; 404 unknown or forged.
    The same ``Idempotency-Key`` replays the first answer."""
    engine = request.app.state.engine
    return await anyio.to_thread.run_sync(
        lambda: redeem(
            engine,
            body.coupon_code,
            store_id=body.store_id,
            amount=body.amount,
            user_id=body.user_id,
            idempotency_key=idempotency_key,
        )
    )
