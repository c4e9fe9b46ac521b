"""HTTP for pings: validation, auth, and the raw JSON answer."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response

from service.auth import Role, require
from service.errors import InvalidInput
from service.locations.schemas import PingBatchIn, PingBatchOut, PingIn, PingOut
from service.locations.service import PingContext, check_not_future, process_ping

router = APIRouter(prefix="/v1/locations", tags=["locations"])
SdkKey = Annotated[Role, Depends(require(Role.sdk))]


def _ctx(request: Request) -> PingContext:
    return request.app.state.ping_context  # type: ignore[no-any-return]


@router.post("", response_model=PingOut, summary="Process one location ping")
async def post_location(ping: PingIn, request: Request, _: SdkKey) -> Response:
    ctx = _ctx(request)
    check_not_future(ping, ctx.settings, time.time())
    body = await process_ping(ctx, ping)
    return Response(body, media_type="application/json")


@router.post("/batch", response_model=PingBatchOut, summary="Process buffered pings of one device")
async def post_batch(batch: PingBatchIn, request: Request, _: SdkKey) -> Response:
    """Pings of one device, processed in timestamp order; results come in request order."""
    ctx = _ctx(request)
    now = time.time()
    devices = {p.device_id for p in batch.pings}
    if len(devices) > 1:
        raise InvalidInput(
            "a batch holds the pings of one device; found several device_id values",
            [{"field": "pings", "reason": f"device_id values: {sorted(devices)[:5]}"}],
        )
    for i, ping in enumerate(batch.pings):
        check_not_future(ping, ctx.settings, now, where=f"pings.{i}.")
    order = sorted(range(len(batch.pings)), key=lambda i: batch.pings[i].timestamp)
    answers: list[bytes] = [b""] * len(batch.pings)
    for i in order:
        answers[i] = await process_ping(ctx, batch.pings[i], now)
    return Response(b'{"results":[' + b",".join(answers) + b"]}", media_type="application/json")
