"""HTTP for redemptions (server keys)."""

from __future__ import annotations

from typing import Annotated, Any

import anyio.to_thread
from fastapi import APIRouter, Depends, Header, Request

from service.auth import Role
from service.http.auth import require
from service.http.routing import JSONBodyRoute
from service.limits import NO_CONTROL
from service.offers.redemptions import redeem
from service.offers.schemas import RedemptionIn, RedemptionOut

router = APIRouter(prefix="/v1/redemptions", tags=["redemptions"], route_class=JSONBodyRoute)
ServerKey = Annotated[Role, Depends(require(Role.server))]


@router.post("", response_model=RedemptionOut, summary="Redeem a coupon code once")
async def post_redemption(
    body: RedemptionIn,
    request: Request,
    _: ServerKey,
    idempotency_key: Annotated[
        str | None, Header(min_length=1, max_length=128, pattern=NO_CONTROL)
    ] = None,
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
