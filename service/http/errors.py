"""The one JSON error shape, ``{"error": {"code", "message", "details"}}``, and the mapping
of domain errors, validation errors and an unreachable database to it."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.errors import DomainError
from service.responses import ORJSONResponse

log = logging.getLogger("geo_offers.errors")


def error_body(
    code: str, message: str, details: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details or []}}


def _validation_details(exc: RequestValidationError) -> list[dict[str, Any]]:
    details = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ())]
        details.append({"field": ".".join(loc), "reason": err.get("msg", "invalid")})
    return details


def error_response(exc: Exception) -> ORJSONResponse | None:
    """The answer to an expected error (domain, validation, database down); ``None`` for
    anything else, which is a bug. Shared by the exception handlers and the ping lane."""
    if isinstance(exc, DomainError):
        headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else {}
        headers.update(exc.headers)
        return ORJSONResponse(
            error_body(exc.code, exc.message, exc.details), exc.status_code, headers=headers
        )
    if isinstance(exc, RequestValidationError):
        details = _validation_details(exc)
        summary = "; ".join(f"{d['field']}: {d['reason']}" for d in details[:5])
        return ORJSONResponse(
            error_body("invalid_input", f"invalid request: {summary}", details), 422
        )
    if isinstance(exc, OperationalError):
        # The database is unreachable (not a bug in a query): say so, and let clients retry.
        log.warning("database unavailable: %s", type(exc.orig).__name__)
        return ORJSONResponse(
            error_body("unavailable", "the database is unavailable; retry shortly"),
            503,
            headers={"Retry-After": "5"},
        )
    return None


def unexpected_response() -> ORJSONResponse:
    """Log the exception being handled (inside the request's id) and answer 500."""
    log.exception("unhandled error")
    return _internal_error()


def _internal_error() -> ORJSONResponse:
    return ORJSONResponse(error_body("internal_error", "internal error (a bug)"), 500)


def install_error_handlers(app: FastAPI) -> None:
    async def _expected(_: Request, exc: Exception) -> ORJSONResponse:
        response = error_response(exc)
        assert response is not None, "registered for expected errors only"
        return response

    for kind in (DomainError, RequestValidationError, OperationalError):
        app.add_exception_handler(kind, _expected)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> ORJSONResponse:
        code = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}.get(
            exc.status_code, "http_error"
        )
        return ORJSONResponse(error_body(code, str(exc.detail)), exc.status_code)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> ORJSONResponse:
        # Starlette's outermost layer calls this after RequestMiddleware has logged the bug
        # and answered it inside the request's id (service.http.requests); this answer is
        # sent only if nothing was.
        return _internal_error()
