"""Request ids, the latency histogram and one access-log line per request."""

from __future__ import annotations

import contextvars
import logging
import re
import time
from collections.abc import Callable
from random import getrandbits
from typing import Any

from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.http.errors import unexpected_response
from service.logs import request_id_var
from service.metrics import REQUEST_DURATION, labelled

access_log = logging.getLogger("geo_offers.access")

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


def route_path(scope: Scope) -> str:
    """The request's path below the app's root path."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


def header(scope: Scope, name: bytes) -> bytes | None:
    """The first value of header ``name`` (lower case), if the request has it."""
    for key, value in scope.get("headers", ()):
        if key == name:
            return value  # type: ignore[no-any-return]
    return None


class RouteTemplates:
    """The documented routes' templates, to label requests answered before routing (a 413
    on Content-Length), read once from the OpenAPI schema."""

    def __init__(self, openapi: Callable[[], dict[str, Any]]) -> None:
        self._openapi = openapi
        self._table: list[tuple[re.Pattern[str], str, frozenset[str]]] | None = None

    def match(self, method: str, path: str) -> str | None:
        if self._table is None:
            try:
                paths: dict[str, Any] = self._openapi().get("paths", {})
            except Exception:  # a label is not worth failing a request for
                paths = {}
            # Literal templates first: POST /v1/geofences/import is not /{store_id}.
            ordered = sorted(paths.items(), key=lambda item: "{" in item[0])
            self._table = [
                (compile_path(t)[0], t, frozenset(m.upper() for m in ops)) for t, ops in ordered
            ]
        for regex, template, methods in self._table:
            if method in methods and regex.match(path):
                return template
        return None


def route_template(scope: Scope, fallback: RouteTemplates | None = None) -> str:
    """The matched route's template (``/v1/geofences/{store_id}``), never the raw path;
    ``"unmatched"`` when no route matched.

    Starlette leaves the matched route in ``scope["route"]`` once the app ran.
    """
    path = getattr(scope.get("route"), "path_format", None)
    if path is None and fallback is not None:
        path = fallback.match(scope.get("method", ""), route_path(scope))
    return path if isinstance(path, str) else "unmatched"


class RequestMiddleware:
    """Request id, latency histogram and one access-log line per request (pure ASGI).

    The id comes from a sane ``X-Request-ID`` header or is a new random hex id; it is set in a
    context variable for every log line of the request and sent back in ``X-Request-ID``.
    The access line has the route template, never the query string or any header.
    """

    def __init__(self, app: ASGIApp, templates: RouteTemplates | None = None) -> None:
        self.app = app
        self.templates = templates

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id, token = begin_request(scope)
        raw_id = request_id.encode("ascii")
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [*message.get("headers", ()), (b"x-request-id", raw_id)]
                message = {**message, "headers": headers}
            await send(message)

        started = time.perf_counter()
        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            if not status:  # a bug, nothing sent: log and answer it within the request's id
                await unexpected_response()(scope, receive, send_with_id)
            raise  # on to Starlette's outermost layer and the server's log
        finally:
            status = status or 500  # raised after answering, or never answered
            route = route_template(scope, self.templates if status != 404 else None)
            end_request(scope, route, status, started, token)


def begin_request(scope: Scope) -> tuple[str, contextvars.Token[str | None]]:
    """The request's id (a sane ``X-Request-ID`` or 128 random bits in hex), set for its
    logs. Not a secret: drawn from ``random`` (reseeded in every forked worker) rather than
    from ``os.urandom``, a system call per request."""
    incoming = header(scope, b"x-request-id")
    text = incoming.decode("latin-1") if incoming is not None else ""
    request_id = text if _SANE_REQUEST_ID.fullmatch(text) else f"{getrandbits(128):032x}"
    return request_id, request_id_var.set(request_id)


def end_request(
    scope: Scope,
    route: str,
    status: int,
    started: float,
    token: contextvars.Token[str | None],
) -> None:
    """Latency histogram and access-log line of a request; its id leaves the context."""
    elapsed = time.perf_counter() - started
    method = scope.get("method", "GET")
    method = method if method in _METHODS else "other"
    labelled(REQUEST_DURATION, method, route, f"{status // 100}xx").observe(elapsed)
    if access_log.isEnabledFor(logging.INFO):
        access_log.info(
            "%s %s %d",
            method,
            route,
            status,
            extra={
                "method": method,
                "route": route,
                "status": status,
                "duration_ms": round(elapsed * 1000, 2),
            },
        )
    request_id_var.reset(token)
