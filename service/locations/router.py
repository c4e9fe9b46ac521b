"""HTTP for pings: validation, auth, and the raw JSON answer.

The two ping routes are served by :class:`PingLane`, which :class:`service.app.GeoOffersAPI`
calls for ``POST /v1/locations`` and ``POST /v1/locations/batch`` before anything else of
FastAPI's. Profiled, FastAPI's routing and endpoint machinery (route matching, the request
handler, dependency solving, exception middleware) took about half of the in-process CPU of a
ping that needed no Redis; once the lane sat before the routing, the middleware stack it
still passed through (Starlette's error and exception layers, FastAPI's telemetry checks,
the request-id and body-limit layers, each wrapping ``send``) cost about 5 % of a ping's
CPU in-process (a 3-run A/B), so the lane now does those layers' work itself with their
functions (``benchmarks/README.md``, "Profiles"). The FastAPI routes below stay: they document the
endpoints in OpenAPI and serve them when the lane is off (``GeoOffersAPI.ping_lane = None``,
as when OpenTelemetry is on); both call the same functions, and a test checks that they
answer alike.
"""

from __future__ import annotations

import time
from typing import Any, TypeVar
from urllib.parse import parse_qs

from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.types import Message, Receive, Scope, Send

from service.auth import Role, allowing, check_key
from service.errors import Forbidden, InvalidInput
from service.http.body_limit import too_large_response
from service.http.errors import error_response, unexpected_response
from service.http.requests import begin_request, end_request
from service.locations.schemas import PingBatchIn, PingBatchOut, PingIn, PingOut
from service.locations.service import PingContext, check_not_future, process_ping
from service.ratelimit import check_device_rate

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
_FALSE = frozenset({"0", "false", "no", "off"})


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
        values = parse_qs(query, keep_blank_values=True).get("explain", ["false"])
        flag = values[-1].lower()
        if flag not in _TRUE and flag not in _FALSE:
            raise InvalidInput(
                f"explain must be true or false, got {values[-1][:20]!r}",
                [{"field": "query.explain", "reason": "not a boolean"}],
            )
        explain = flag in _TRUE
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


_JSON = (b"content-type", b"application/json")


class _TooLarge(Exception):
    pass


class PingLane:
    """Serves ``POST /v1/locations`` and ``POST /v1/locations/batch`` ahead of the app's
    middleware stack (see the module docstring); :class:`service.app.GeoOffersAPI` calls it
    for those two and hands everything else, other methods on these paths included, to
    FastAPI.

    It does for its two routes what the stack does for the others, with the same
    functions: the request id (``X-Request-ID`` in and out, in every log line), the latency
    histogram and access line (:func:`service.http.requests.end_request`), the body limit
    (413, :func:`service.http.body_limit.too_large_response`), errors in the one error shape
    (:func:`service.http.errors.error_response`), and a bug answered 500 as the app's handler
    does (then re-raised, as Starlette does, for the server's log).
    """

    def __init__(self, max_body_bytes: int) -> None:
        self.max_body_bytes = max_body_bytes

    @staticmethod
    def handles(scope: Scope) -> bool:
        return (
            scope["type"] == "http"
            and scope["path"] in _PATHS
            and scope["method"] == "POST"
            and not scope.get("root_path")
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"]
        request_id, token = begin_request(scope)
        started = time.perf_counter()
        status = 500
        try:
            status = await self._serve(scope, receive, send, path, request_id.encode("ascii"))
        finally:
            end_request(scope, path, status, started, token)

    async def _serve(
        self, scope: Scope, receive: Receive, send: Send, path: str, request_id: bytes
    ) -> int:
        auth = ""
        declared = -1
        for name, value in scope["headers"]:
            if name == b"authorization":
                auth = value.decode("latin-1")
            elif name == b"content-length" and value.isdigit():
                declared = int(value)
        limit = self.max_body_bytes
        try:  # nothing is sent inside: an error can always be answered
            if declared > limit:
                raise _TooLarge
            body = await _read_body(receive, limit)
            if body is None:  # the client went away: nobody to answer
                return 499
            state = scope["app"].state
            if path == PING_PATH:
                query = scope["query_string"].decode("latin-1")
                answer = await answer_ping(state, auth, query, body)
            else:
                answer = await answer_batch(state, auth, body)
        except _TooLarge:
            await _answer_error(too_large_response(limit), scope, receive, send, request_id)
            return 413
        except Exception as exc:
            response = error_response(exc)
            if response is None:  # a bug: the app's 500, then up for the server's log
                await _answer_error(unexpected_response(), scope, receive, send, request_id)
                raise
            await _answer_error(response, scope, receive, send, request_id)
            return response.status_code
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    _JSON,
                    (b"content-length", b"%d" % len(answer)),
                    (b"x-request-id", request_id),
                ],
            }
        )
        await send({"type": "http.response.body", "body": answer})
        return 200


_PATHS = frozenset({PING_PATH, BATCH_PATH})


async def _answer_error(
    response: Response, scope: Scope, receive: Receive, send: Send, request_id: bytes
) -> None:
    response.raw_headers.append((b"x-request-id", request_id))
    await response(scope, receive, send)


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    chunks: list[bytes] = []
    size = 0
    while True:
        message: Message = await receive()
        if message["type"] != "http.request":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
