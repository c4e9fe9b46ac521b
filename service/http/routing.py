"""Routes that read a JSON body whatever the request's ``Content-Type`` says.

The ping routes always did (SDKs and ``curl -d`` get the header wrong); every other JSON
route answered ``curl -d '{…}'`` (sent as a form) with "Input should be a valid
dictionary". Accepting JSON everywhere is the one consistent answer that breaks no client,
and it opens no cross-site hole: every route needs an ``Authorization`` header, which a
page on another site cannot send without a CORS preflight, and this service allows none.
Multipart routes (the file uploads) are left alone.
"""

from __future__ import annotations

from fastapi import params
from fastapi.routing import APIRoute
from starlette.types import Receive, Scope, Send

_JSON = (b"content-type", b"application/json")


class JSONBodyRoute(APIRoute):
    """An ``APIRoute`` whose JSON body is parsed as JSON with any ``Content-Type``."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        field = self.body_field
        if field is not None and not isinstance(field.field_info, params.Form):
            headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
            scope = {**scope, "headers": [*headers, _JSON]}
        await super().handle(scope, receive, send)
