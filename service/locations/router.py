"""HTTP for pings: validation, auth, and the raw JSON answer."""

from __future__ import annotations

import time
from typing import Any, TypeVar

from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from service.auth import Role, require
from service.errors import Forbidden, InvalidInput
from service.locations.schemas import PingBatchIn, PingBatchOut, PingIn, PingOut
from service.locations.service import PingContext, check_not_future, process_ping
from service.observability import check_device_rate

router = APIRouter(prefix="/v1/locations", tags=["locations"])
# The hot path: called directly rather than through Depends(), whose per-request solving
# cost ~200 us here (profiled); the OpenAPI document still describes key and parameters.
_sdk_key = require(Role.sdk)
M = TypeVar("M", bound=BaseModel)
_EXPLAIN = {
    "name": "explain",
    "in": "query",
    "required": False,
    "schema": {"type": "boolean", "default": False},
    "description": "Admin keys only: also list every campaign's reason code.",
}


def _ctx(request: Request) -> PingContext:
    return request.app.state.ping_context  # type: ignore[no-any-return]


def _openapi(model: type[BaseModel], *parameters: dict[str, Any]) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": model.model_json_schema()}},
        },
        "parameters": list(parameters),
        "security": [{"bearer": []}],
    }


async def _parse(request: Request, model: type[M]) -> M:
    """Validate the raw body as JSON whatever the Content-Type (SDKs and curl get it wrong),
    in one pass (pydantic's JSON parser), with FastAPI's 422 shape on failure."""
    body = await request.body()
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
        ) from None


@router.post(
    "",
    response_model=PingOut,
    summary="Process one location ping",
    openapi_extra=_openapi(PingIn, _EXPLAIN),
)
async def post_location(request: Request) -> Response:
    """With ``explain=true`` (admin keys only) the answer also lists every campaign's reason."""
    role = await _sdk_key(request)
    explain = request.query_params.get("explain", "").lower() in ("1", "true", "yes", "on")
    if explain and role is not Role.admin:
        raise Forbidden("explain=true needs an admin key")
    ping = await _parse(request, PingIn)
    check_device_rate(request.app.state, ping.device_id)
    ctx = _ctx(request)
    check_not_future(ping, ctx.settings, time.time())
    body = await process_ping(ctx, ping, explain=explain)
    return Response(body, media_type="application/json")


@router.post(
    "/batch",
    response_model=PingBatchOut,
    summary="Process buffered pings of one device",
    openapi_extra=_openapi(PingBatchIn),
)
async def post_batch(request: Request) -> Response:
    """Pings of one device, processed in timestamp order; results come in request order."""
    await _sdk_key(request)
    batch = await _parse(request, PingBatchIn)
    check_device_rate(request.app.state, batch.pings[0].device_id)  # one request, one token
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
