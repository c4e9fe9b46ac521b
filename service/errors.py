"""Domain errors: business outcomes that carry their own HTTP status and error code.

They know nothing of HTTP frameworks; ``service.http.errors`` turns them (and the web
framework's own errors) into the one JSON error shape at the edge.
"""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    """A business outcome with its own HTTP status; never answered as a bare 500."""

    status_code = 400
    code = "bad_request"

    def __init__(
        self,
        message: str,
        details: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or []
        self.headers = headers or {}


class Unauthorized(DomainError):
    status_code = 401
    code = "unauthorized"


class Forbidden(DomainError):
    status_code = 403
    code = "forbidden"


class NotFound(DomainError):
    status_code = 404
    code = "not_found"


class Conflict(DomainError):
    status_code = 409
    code = "conflict"


class InvalidInput(DomainError):
    status_code = 422
    code = "invalid_input"


class InvalidFile(InvalidInput):
    code = "invalid_file"


class FuturePing(InvalidInput):
    code = "future_ping"


class TooManyRequests(DomainError):
    status_code = 429
    code = "too_many_requests"


class ServiceUnavailable(DomainError):
    status_code = 503
    code = "unavailable"
