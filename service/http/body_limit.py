"""413 for request bodies over the configured limits (uploads have their own)."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.http.errors import error_body
from service.http.requests import header, route_path
from service.responses import ORJSONResponse

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
        upload = route_path(scope).rstrip("/") in UPLOAD_PATHS
        return self.max_upload_bytes if upload else self.max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope)
        declared = header(scope, b"content-length")
        if declared is not None and declared.isdigit():
            if int(declared) > limit:
                await self._reject(limit, scope, receive, send)
                return
            if header(scope, b"transfer-encoding") is None:
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
