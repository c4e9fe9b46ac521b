"""Metrics, JSON logs with a request id, body size limits and per-device flood control.

``install_observability(app, settings)`` wires it all into the app; the ``observe_*``,
``set_*`` and ``time_import`` helpers and ``check_device_rate`` are for the services.

Metrics live in prometheus-client's default registry. With several uvicorn workers set
``PROMETHEUS_MULTIPROC_DIR`` to an empty directory (wiped before each start) for every
worker: prometheus-client then keeps each process's values in files there and ``/metrics``
merges them with a ``MultiProcessCollector``. Counters and histograms are summed over the
workers; the gauges (index size and versions, the same in every worker) are declared with
``multiprocess_mode="livemax"`` so the endpoint reports the largest value among the
workers (uvicorn has no hook to call ``mark_process_dead``, so a replaced worker's last
value stays in the files; versions only grow, so the maximum is still right).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import math
import os
import re
import sys
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any, TextIO

from fastapi import FastAPI, Request, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import TooManyRequests, error_body, unexpected_response
from service.responses import ORJSONResponse
from service.settings import Settings

log = logging.getLogger("geo_offers")
access_log = logging.getLogger("geo_offers.access")

# ---------------------------------------------------------------------------------------
# Metrics

REQUEST_DURATION = Histogram(
    "geo_offers_http_request_duration_seconds",
    "HTTP request latency by method, route template and status class.",
    ["method", "route", "status"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
PINGS = Counter("geo_offers_pings_total", "Pings answered, by reason code.", ["reason"])
OFFERS = Counter("geo_offers_offers_total", "Offers issued, by campaign.", ["campaign"])
CAP_REJECTIONS = Counter(
    "geo_offers_cap_rejections_total",
    'Offers withheld by a frequency cap or budget, by cap (e.g. "campaign:1/86400s").',
    ["cap"],
)
INDEX_FENCES = Gauge(
    "geo_offers_index_fences", "Fences in this replica's index.", multiprocess_mode="livemax"
)
INDEX_VERSION = Gauge(
    "geo_offers_index_version", "Fence data version of the index.", multiprocess_mode="livemax"
)
CAMPAIGNS_VERSION = Gauge(
    "geo_offers_campaigns_version",
    "Campaign data version this replica serves.",
    multiprocess_mode="livemax",
)
IMPORT_DURATION = Histogram(
    "geo_offers_import_duration_seconds",
    "File import duration by kind (geofences|campaigns) and outcome (ok|rejected).",
    ["kind", "outcome"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0),
)

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


_CHILDREN: dict[tuple[Any, ...], Any] = {}


def _child(metric: Any, *labels: str) -> Any:
    """The child of ``metric`` for a label set, looked up once (``labels()`` takes a lock and
    builds a tuple on every call). Only for bounded label sets (methods, route templates,
    status classes, reason codes): the cache keeps every set it has seen."""
    key = (metric, *labels)
    child = _CHILDREN.get(key)
    if child is None:
        child = _CHILDREN[key] = metric.labels(*labels)
    return child


def observe_ping(reason: str) -> None:
    """Count one answered ping by its reason code (``offer_issued``, ``no_trigger``, …)."""
    _child(PINGS, reason).inc()


def observe_offer(campaign_id: str) -> None:
    OFFERS.labels(campaign_id).inc()


def observe_cap_rejection(cap: str) -> None:
    """Count one offer withheld by ``cap``, e.g. ``"campaign:1/86400s"`` or ``"budget:total"``."""
    CAP_REJECTIONS.labels(cap).inc()


def set_index(fences: int, version: int) -> None:
    INDEX_FENCES.set(fences)
    INDEX_VERSION.set(version)


def set_campaigns_version(version: int) -> None:
    CAMPAIGNS_VERSION.set(version)


@contextlib.contextmanager
def time_import(kind: str) -> Iterator[None]:
    """Time an import of ``kind`` ("geofences" | "campaigns"); outcome "rejected" if it raises.

    >>> with time_import("geofences"):
    ...     pass
    """
    started = time.perf_counter()
    outcome = "rejected"
    try:
        yield
        outcome = "ok"
    finally:
        IMPORT_DURATION.labels(kind, outcome).observe(time.perf_counter() - started)


def metrics_registry() -> CollectorRegistry:
    """The registry to expose: every worker's files in multiprocess mode, else the default."""
    # prometheus-client's own switch, read by the library itself at import; not a setting.
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return registry
    return REGISTRY


def _refresh_gauges(state: Any) -> None:
    """Read index and campaign versions off ``app.state`` at scrape time, so the gauges are
    right even where the holders do not call :func:`set_index` themselves."""
    holder = getattr(state, "index_holder", None)
    index = getattr(holder, "index", None)
    if index is not None:
        set_index(len(index), int(index.version))
    campaigns = getattr(getattr(state, "campaign_holder", None), "current", None)
    version = getattr(campaigns, "version", -1)
    if isinstance(version, int) and version >= 0:
        set_campaigns_version(version)


def _route_path(scope: Scope) -> str:
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


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
        path = fallback.match(scope.get("method", ""), _route_path(scope))
    return path if isinstance(path, str) else "unmatched"


# ---------------------------------------------------------------------------------------
# Logs

_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "geo_offers_request_id", default=None
)
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_API_KEY = re.compile(r"go_(sdk|server|admin)_[A-Za-z0-9_-]{20,}")
_COORDINATE_FIELDS = frozenset({"lat", "lng"})
_NOT_EXTRA = frozenset(RESERVED_ATTRS) | {"message", "asctime", "request_id", "taskName"}


def current_request_id() -> str | None:
    """The id of the request being served in this context, if any."""
    return _request_id.get()


def redact(text: str) -> str:
    """Replace API keys by ``go_<role>_***``.

    >>> redact("key go_sdk_abcdefghijklmnopqrstuvwxyz01 used")
    'key go_sdk_*** used'
    """
    return _API_KEY.sub(r"go_\1_***", text) if "go_" in text else text


def _clean(value: Any, key: str | None = None) -> Any:
    if isinstance(value, float) and key in _COORDINATE_FIELDS:
        return round(value, 3)  # ≈ 100 m: where a device was, not where it is
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _clean(v, k if isinstance(k, str) else None) for k, v in value.items()}
    if type(value) in (list, tuple):  # exact types: a named tuple keeps its values as they are
        return type(value)(_clean(v) for v in value)
    return value


class LogHygieneFilter(logging.Filter):
    """Adds ``request_id``; rounds ``lat``/``lng`` extras to 3 decimals; redacts API keys
    in the message and in extra values. Always lets the record through."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = _request_id.get()
        if isinstance(record.msg, str) and (
            "go_" in record.msg or any(isinstance(a, str) and "go_" in a for a in _args(record))
        ):
            try:
                message = record.getMessage()
            except Exception:  # a malformed call: let the handler report it as usual
                return True
            record.msg, record.args = redact(message), None
        for key, value in list(record.__dict__.items()):
            if key not in _NOT_EXTRA:
                cleaned = _clean(value, key)
                if cleaned is not value:
                    setattr(record, key, cleaned)
        return True


def _args(record: logging.LogRecord) -> tuple[Any, ...]:
    args = record.args
    if isinstance(args, tuple):
        return args
    return tuple(args.values()) if isinstance(args, dict) else ()


class _JsonFormatter(JsonFormatter):
    def format(self, record: logging.LogRecord) -> str:
        # Tracebacks are rendered here, after the filter: redact the final line too.
        return redact(super().format(record))


def json_formatter() -> logging.Formatter:
    """One JSON object per line: timestamp, level, logger, message, request_id, extras."""
    return _JsonFormatter(
        ["levelname", "name", "message", "request_id"],
        rename_fields={"levelname": "level", "name": "logger"},
        reserved_attrs=[*RESERVED_ATTRS, "color_message"],  # uvicorn's ANSI copy of message
        timestamp=True,
    )


class _StderrHandler(logging.StreamHandler[TextIO]):
    """Writes to whatever ``sys.stderr`` is at the time (test runners swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def json_handler(stream: Any = None) -> logging.Handler:
    """A handler with the JSON format and the hygiene filter; stderr by default."""
    handler: logging.Handler = _StderrHandler() if stream is None else logging.StreamHandler(stream)
    handler.setFormatter(json_formatter())
    handler.addFilter(LogHygieneFilter())
    return handler


def setup_logging(level: str) -> None:
    """JSON logs on stderr for the root logger; calling it again only changes the level.

    uvicorn's loggers go through the same handler so every line is JSON; its access log is
    turned off in favour of ours (route templates, no query strings).
    """
    root = logging.getLogger()
    root.setLevel(level.upper())
    if not any(getattr(h, "_geo_offers", False) for h in root.handlers):
        handler = json_handler()
        handler._geo_offers = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    for name in ("uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    # Ours replaces uvicorn's access line, which carries the raw path and query string.
    logging.getLogger("uvicorn.access").disabled = True


# ---------------------------------------------------------------------------------------
# Middleware


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value  # type: ignore[no-any-return]
    return None


class RequestMiddleware:
    """Request id, latency histogram and one access-log line per request (pure ASGI).

    The id comes from a sane ``X-Request-ID`` header or is a new uuid4; it is set in a
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
    """The request's id (a sane ``X-Request-ID`` or a new uuid4 hex), set for its logs."""
    incoming = _header(scope, b"x-request-id")
    text = incoming.decode("latin-1") if incoming is not None else ""
    request_id = text if _SANE_REQUEST_ID.fullmatch(text) else uuid.uuid4().hex
    return request_id, _request_id.set(request_id)


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
    _child(REQUEST_DURATION, method, route, f"{status // 100}xx").observe(elapsed)
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
    _request_id.reset(token)


UPLOAD_PATHS = frozenset({"/v1/geofences/import", "/v1/campaigns/import"})


class _BodyTooLarge(Exception):
    pass


class BodyLimitMiddleware:
    """413 for bodies over ``max_body_bytes`` (``max_upload_bytes`` on the import routes).

    ``Content-Length`` is checked before the app runs; a chunked body is counted as it is
    read, and reading past the limit ends the request with the same 413.
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int, max_upload_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_upload_bytes = max_upload_bytes

    def limit_for(self, scope: Scope) -> int:
        upload = _route_path(scope).rstrip("/") in UPLOAD_PATHS
        return self.max_upload_bytes if upload else self.max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope)
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit():
            if int(declared) > limit:
                await self._reject(limit, scope, receive, send)
                return
            if _header(scope, b"transfer-encoding") is None:
                # The server frames the body by Content-Length: no more can arrive.
                await self.app(scope, receive, send)
                return

        received = 0
        exceeded = False
        started = False

        async def counting_receive() -> Message:
            nonlocal received, exceeded
            if exceeded:
                raise _BodyTooLarge
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    exceeded = True
                    raise _BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if exceeded:  # whatever the app made of the error, the answer is our 413
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except _BodyTooLarge:
            pass
        except Exception:
            if not exceeded:
                raise
        if exceeded and not started:
            await self._reject(limit, scope, receive, send)

    @staticmethod
    async def _reject(limit: int, scope: Scope, receive: Receive, send: Send) -> None:
        await too_large_response(limit)(scope, receive, send)


def too_large_response(limit: int) -> ORJSONResponse:
    """The 413 for a body over ``limit`` bytes (the connection is closed after it)."""
    body = error_body("payload_too_large", f"request body is larger than {limit} bytes")
    return ORJSONResponse(body, 413, headers={"Connection": "close"})


# ---------------------------------------------------------------------------------------
# Per-device flood control

MAX_TRACKED_DEVICES = 100_000


class DeviceRateLimiter:
    """Token buckets per device: ``burst`` pings at once, then ``rate_per_s`` sustained.

    In-process, so per replica: a device spread over N replicas gets N times the rate.
    That is fine for flood protection (this is not a billing limit). Memory is bounded:
    buckets refilled to full are forgotten (a new one is the same), and past
    ``max_devices`` the least recently seen device is dropped.

    >>> clock = iter([0.0, 0.0, 0.0]).__next__
    >>> limiter = DeviceRateLimiter(1.0, 2, clock=clock)
    >>> [limiter.acquire("d") for _ in range(3)]
    [0.0, 0.0, 1.0]
    """

    def __init__(
        self,
        rate_per_s: float,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_devices: int = MAX_TRACKED_DEVICES,
    ) -> None:
        self.rate_per_s = rate_per_s
        self.burst = float(burst)
        self.clock = clock
        self.max_devices = max_devices
        self._full_after_s = self.burst / rate_per_s if rate_per_s > 0 else math.inf
        # device -> (tokens, last update), least recently seen first
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._buckets)

    def acquire(self, device_id: str) -> float:
        """Take one token: 0.0 if allowed, else the seconds until the next token."""
        if self.rate_per_s <= 0:
            return 0.0
        with self._lock:
            now = self.clock()
            self._evict(now)
            tokens, last = self._buckets.pop(device_id, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate_per_s)
            if tokens >= 1.0:
                self._buckets[device_id] = (tokens - 1.0, now)
                return 0.0
            self._buckets[device_id] = (tokens, now)
            return (1.0 - tokens) / self.rate_per_s

    def _evict(self, now: float) -> None:
        buckets = self._buckets
        while buckets:
            device, (_, last) = next(iter(buckets.items()))
            if now - last < self._full_after_s and len(buckets) < self.max_devices:
                break
            del buckets[device]


def check_device_rate(app_state: Any, device_id: str) -> None:
    """Raise :class:`TooManyRequests` when ``device_id`` sends pings too fast.

    Call it once per request (a batch counts once). A no-op where the app has no limiter.
    """
    limiter: DeviceRateLimiter | None = getattr(app_state, "device_limiter", None)
    if limiter is None:
        return
    wait_s = limiter.acquire(device_id)
    if wait_s > 0:
        retry_after = max(1, math.ceil(wait_s))
        raise TooManyRequests(
            f"too many pings from this device; Retry-After: {retry_after} s",
            [{"field": "device_id", "reason": f"retry_after_s={retry_after}"}],
            headers={"Retry-After": str(retry_after)},
        )


# ---------------------------------------------------------------------------------------
# Wiring


def install_observability(app: FastAPI, settings: Settings) -> None:
    """JSON logs, request ids and timing, body limits, the device limiter and ``/metrics``."""
    setup_logging(settings.log_level)
    app.state.device_limiter = DeviceRateLimiter(settings.device_rate_per_s, settings.device_burst)
    # The last added middleware runs first: ids and timing also cover the 413s.
    app.add_middleware(
        BodyLimitMiddleware,
        max_body_bytes=settings.max_body_bytes,
        max_upload_bytes=settings.max_upload_bytes,
    )
    app.add_middleware(RequestMiddleware, templates=RouteTemplates(app.openapi))

    @app.get("/metrics", tags=["ops"], summary="Prometheus metrics", include_in_schema=False)
    def metrics(request: Request) -> Response:
        _refresh_gauges(request.app.state)
        return Response(generate_latest(metrics_registry()), media_type=CONTENT_TYPE_LATEST)
