"""HTTP for pings: validation, auth, and the raw JSON answer.

The two ping routes are served by :class:`PingLane`, a pure ASGI layer that sits inside the
request-id, metrics and body-limit middleware and answers ``POST /v1/locations`` and
``POST /v1/locations/batch`` before FastAPI's routing. Profiled, FastAPI's routing and
endpoint machinery (route matching, the request handler, dependency solving, exception
middleware) took about half of the in-process CPU of a ping that needed no Redis
(``benchmarks/README.md``). The FastAPI routes below stay: they document the endpoints in
OpenAPI and serve them in an app built without the lane; both call the same functions, and
a test checks that they answer alike.
"""

from __future__ import annotations

import time
from typing import Any, TypeVar
from urllib.parse import parse_qs

from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.auth import Role, allowing, check_key
from service.errors import Forbidden, InvalidInput, error_response
from service.locations.schemas import PingBatchIn, PingBatchOut, PingIn, PingOut
from service.locations.service import PingContext, check_not_future, process_ping
from service.observability import check_device_rate

router = APIRouter(prefix="/v1/locations", tags=["locations"])
PING_PATH = "/v1/locations"
BATCH_PATH = "/v1/locations/batch"
_SDK = allowing(Role.sdk)
M = TypeVar("M", bound=BaseModel)
_EXPLAIN = {
    "name": "explain",
    "in": "query",
    "required": False,
    "schema": {"type": "boolean", "default": False},
    "description": "Admin keys only: also list every campaign's reason code.",
}
_TRUE = frozenset({"1", "true", "yes", "on"})


def _openapi(model: type[BaseModel], *parameters: dict[str, Any]) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": model.model_json_schema()}},
        },
        "parameters": list(parameters),
        "security": [{"bearer": []}],
    }


def _parse(body: bytes, model: type[M]) -> M:
    """Validate the raw body as JSON whatever the Content-Type (SDKs and curl get it wrong),
    in one pass (pydantic's JSON parser), with FastAPI's 422 shape on failure."""
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
        ) from None


async def answer_ping(app_state: Any, authorization: str, query: str, body: bytes) -> bytes:
    """One ping: key, ``explain`` flag, body, flood control, clock check, then processing."""
    role = await check_key(app_state.keys, authorization, _SDK)
    explain = False
    if query:
        values = parse_qs(query).get("explain", [""])
        explain = values[-1].lower() in _TRUE
    if explain and role is not Role.admin:
        raise Forbidden("explain=true needs an admin key")
    ping = _parse(body, PingIn)
    check_device_rate(app_state, ping.device_id)
    ctx: PingContext = app_state.ping_context
    check_not_future(ping, ctx.settings, time.time())
    return await process_ping(ctx, ping, explain=explain)


async def answer_batch(app_state: Any, authorization: str, body: bytes) -> bytes:
    """Pings of one device, processed in timestamp order; results come in request order."""
    await check_key(app_state.keys, authorization, _SDK)
    batch = _parse(body, PingBatchIn)
    check_device_rate(app_state, batch.pings[0].device_id)  # one request, one token
    ctx: PingContext = app_state.ping_context
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
    return b'{"results":[' + b",".join(answers) + b"]}"


@router.post(
    "",
    response_model=PingOut,
    summary="Process one location ping",
    openapi_extra=_openapi(PingIn, _EXPLAIN),
)
async def post_location(request: Request) -> Response:
    """With ``explain=true`` (admin keys only) the answer also lists every campaign's reason."""
    auth = request.headers.get("authorization", "")
    body = await answer_ping(request.app.state, auth, request.url.query, await request.body())
    return Response(body, media_type="application/json")


@router.post(
    "/batch",
    response_model=PingBatchOut,
    summary="Process buffered pings of one device",
    openapi_extra=_openapi(PingBatchIn),
)
async def post_batch(request: Request) -> Response:
    """Pings of one device, processed in timestamp order; results come in request order."""
    auth = request.headers.get("authorization", "")
    body = await answer_batch(request.app.state, auth, await request.body())
    return Response(body, media_type="application/json")


class _Route:
    """What :func:`service.observability.route_template` reads off ``scope["route"]``."""

    def __init__(self, path_format: str) -> None:
        self.path_format = path_format


_ROUTES = {PING_PATH: _Route(PING_PATH), BATCH_PATH: _Route(BATCH_PATH)}
_JSON_HEADERS = (b"content-type", b"application/json")


class PingLane:
    """Pure ASGI: serves the two ping routes before FastAPI's routing (see module docstring).

    Everything else, including other methods on these paths, goes on to the app. Errors
    get the one error shape from :func:`service.errors.error_response`; an unexpected one
    propagates to the app's outermost handler, as it would from a routed endpoint.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = _ROUTES.get(scope["path"]) if scope["type"] == "http" else None
        if route is None or scope["method"] != "POST" or scope.get("root_path"):
            await self.app(scope, receive, send)
            return
        scope["route"] = route
        auth = ""
        for name, value in scope["headers"]:
            if name == b"authorization":
                auth = value.decode("latin-1")
                break
        try:
            body = await _read_body(receive)
            if body is None:  # the client went away: nobody to answer
                return
            state = scope["app"].state
            if route.path_format == PING_PATH:
                query = scope["query_string"].decode("latin-1")
                answer = await answer_ping(state, auth, query, body)
            else:
                answer = await answer_batch(state, auth, body)
        except Exception as exc:
            response = error_response(exc)
            if response is None:
                raise
            await response(scope, receive, send)
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [_JSON_HEADERS, (b"content-length", b"%d" % len(answer))],
            }
        )
        await send({"type": "http.response.body", "body": answer})


async def _read_body(receive: Receive) -> bytes | None:
    chunks: list[bytes] = []
    while True:
        message: Message = await receive()
        if message["type"] != "http.request":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
