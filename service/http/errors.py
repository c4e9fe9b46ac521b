"""The one JSON error shape, ``{"error": {"code", "message", "details"}}``, and the mapping
of domain errors, validation errors and an unreachable database or Redis to it (503
``unavailable`` with ``Retry-After``)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path

from service.caps.base import CapUnavailable
from service.errors import DomainError, InvalidInput
from service.limits import CONTROL_REASON, NO_CONTROL, TEXT
from service.responses import ORJSONResponse
from service.state.base import StateUnavailable

log = logging.getLogger("geo_offers.errors")


def error_body(
    code: str, message: str, details: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details or []}}


_CONTROL_PATTERNS = frozenset({NO_CONTROL, TEXT})
#: Seconds a client should wait before retrying a 503 (the dependency is down).
RETRY_AFTER_S = "5"


def _reason(err: Any) -> str:
    ctx = err.get("ctx") or {}
    if err.get("type") == "string_pattern_mismatch" and ctx.get("pattern") in _CONTROL_PATTERNS:
        return CONTROL_REASON
    if err.get("type") == "string_unicode":
        return "must be valid Unicode text (no lone surrogates)"
    return str(err.get("msg", "invalid")).removeprefix("Value error, ")


def invalid_request(errors: Sequence[Any], loc: tuple[str, ...] = ()) -> InvalidInput:
    """Pydantic's errors as the API words them: ``invalid request: field: reason; …`` with
    one detail per field. The console's forms show their errors through this too, so a
    marketer reads what an API client would (``loc`` prefixes each field, e.g. ``body``)."""
    details = []
    for err in errors:
        path = [*loc, *(str(p) for p in err.get("loc", ()))]
        details.append({"field": ".".join(path), "reason": _reason(err)})
    summary = "; ".join(f"{d['field']}: {d['reason']}" for d in details[:5])
    return InvalidInput(f"invalid request: {summary}", details)


def _unavailable(what: str) -> ORJSONResponse:
    return ORJSONResponse(
        error_body("unavailable", f"{what} is unavailable; retry shortly"),
        503,
        headers={"Retry-After": RETRY_AFTER_S},
    )


def error_response(exc: Exception) -> ORJSONResponse | None:
    """The answer to an expected error (domain, validation, database down); ``None`` for
    anything else, which is a bug. Shared by the exception handlers and the ping lane."""
    if isinstance(exc, DomainError):
        headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else {}
        if exc.status_code == 503:
            headers["Retry-After"] = RETRY_AFTER_S
        headers.update(exc.headers)
        return ORJSONResponse(
            error_body(exc.code, exc.message, exc.details), exc.status_code, headers=headers
        )
    if isinstance(exc, RequestValidationError):
        invalid = invalid_request(exc.errors())
        return ORJSONResponse(error_body(invalid.code, invalid.message, invalid.details), 422)
    if isinstance(exc, OperationalError):
        # The database is unreachable (not a bug in a query): say so, and let clients retry.
        log.warning("database unavailable: %s", type(exc.orig).__name__)
        return _unavailable("the database")
    if isinstance(exc, StateUnavailable | CapUnavailable):
        # Redis is unreachable; the route did none of its work (or, for an erasure, answered
        # 202 instead): say so, and let clients retry.
        log.warning("redis unavailable: %s", type(exc).__name__)
        return _unavailable("the device-state store (Redis)")
    return None


def unexpected_response() -> ORJSONResponse:
    """Log the exception being handled (inside the request's id) and answer 500."""
    log.exception("unhandled error")
    return _internal_error()


def _internal_error() -> ORJSONResponse:
    return ORJSONResponse(error_body("internal_error", "internal error (a bug)"), 500)


def _allowed_methods(request: Request) -> str:
    """Every documented method of the request's path (Allow, RFC 9110): Starlette names only
    those of the first route it matched, and each method is its own route here."""
    path = request.scope.get("path", "")
    matched = [
        (template, operations)
        for template, operations in request.app.openapi().get("paths", {}).items()
        if compile_path(template)[0].match(path)
    ]
    # A literal path (/v1/campaigns/import) is its own resource, not an id of /{campaign_id}.
    literal = [(t, ops) for t, ops in matched if "{" not in t]
    methods = {m.upper() for _, operations in literal or matched for m in operations}
    return ", ".join(sorted(methods))


def install_error_handlers(app: FastAPI) -> None:
    async def _expected(_: Request, exc: Exception) -> ORJSONResponse:
        response = error_response(exc)
        assert response is not None, "registered for expected errors only"
        return response

    for kind in (
        DomainError,
        RequestValidationError,
        OperationalError,
        StateUnavailable,
        CapUnavailable,
    ):
        app.add_exception_handler(kind, _expected)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> ORJSONResponse:
        if exc.status_code == 400:
            # FastAPI's answer to a body it could not decode (not UTF-8): bad input, a 422.
            reason = "the body could not be read as JSON (is it UTF-8?)"
            details = [{"field": "body", "reason": reason}]
            return ORJSONResponse(error_body("invalid_input", reason, details), 422)
        code = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}.get(
            exc.status_code, "http_error"
        )
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = _allowed_methods(request)
        return ORJSONResponse(error_body(code, str(exc.detail)), exc.status_code, headers=headers)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> ORJSONResponse:
        # Starlette's outermost layer calls this after RequestMiddleware has logged the bug
        # and answered it inside the request's id (service.http.requests); this answer is
        # sent only if nothing was.
        return _internal_error()
