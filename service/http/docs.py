"""The API's documents: ``/docs`` (Swagger UI) and ``/redoc`` served with their assets from
the pinned ``fastapi-offline`` package (no CDN: they work offline), the Bearer scheme every
keyed route declares, and the error answers each route documents.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import fastapi_offline
from fastapi import FastAPI, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.security import HTTPBearer
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from starlette.responses import HTMLResponse

ASSETS = Path(fastapi_offline.__file__).resolve().parent / "static"
ASSETS_URL = "/docs/assets"
#: The pages load nothing from elsewhere (ReDoc's footer logo would come from its CDN: the
#: browser refuses it, and ReDoc hides the image). Inline scripts and styles are the pages'.
CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:; connect-src 'self'"
)

#: ``components.securitySchemes.bearer``: Swagger UI's "Authorize" takes a key once.
BEARER = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    description=(
        "An API key, sent as `Authorization: Bearer <key>`. Roles: `sdk` (pings), `server` "
        "(user attributes and events, redemptions), `admin` (everything). `geo-offers keys "
        "create --role R` prints one; `./dev demo` prints one of each."
    ),
)


class ErrorDetail(BaseModel):
    """What is wrong, where: ``field`` (or a file's ``line``) and ``reason``, and more."""

    model_config = {"extra": "allow"}

    field: str | None = None
    reason: str | None = None


class ErrorBody(BaseModel):
    code: str
    message: str
    details: list[ErrorDetail]


class ErrorOut(BaseModel):
    """The one error shape of every route."""

    error: ErrorBody


_WHY = {
    401: "No key, or an unknown or revoked one",
    403: "The key's role may not use this route",
    404: "Not found",
    409: "Conflict (already done, or a reused key with another body)",
    410: "Gone (expired)",
    413: "The body is larger than the limit",
    422: "Invalid input: each detail names the field (or line) and the reason",
    429: "Too many requests from this device (see Retry-After)",
    503: "A dependency (database or Redis) is down: nothing was done; retry after Retry-After",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the error answers ``codes``, in the one error shape."""
    out: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        entry: dict[str, Any] = {"model": ErrorOut, "description": _WHY[code]}
        if code in (429, 503):
            entry["headers"] = {
                "Retry-After": {"description": "Seconds to wait", "schema": {"type": "string"}}
            }
        out[code] = entry
    return out


def hoist_defs(doc: dict[str, Any]) -> None:
    """Move ``$defs`` nested in operations (a pydantic model's own schema, as the ping routes
    give it) into ``components.schemas`` and point their ``$ref`` there: ReDoc cannot
    resolve ``#/$defs/…`` and shows an error instead of the documentation.

    >>> doc = {"paths": {"/p": {"schema": {"$defs": {"A": {"type": "string"}},
    ...        "properties": {"a": {"$ref": "#/$defs/A"}}}}}}
    >>> hoist_defs(doc); doc["paths"]["/p"]["schema"], doc["components"]["schemas"]
    ({'properties': {'a': {'$ref': '#/components/schemas/A'}}}, {'A': {'type': 'string'}})
    """
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    stack: list[Any] = [doc.get("paths", {})]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for name, schema in node.pop("$defs", {}).items():
                schemas.setdefault(name, schema)
                stack.append(schema)
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                node["$ref"] = "#/components/schemas/" + ref.removeprefix("#/$defs/")
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def _own_only(page: HTMLResponse) -> HTMLResponse:
    page.headers["Content-Security-Policy"] = CSP
    return page


def install_docs(app: FastAPI) -> None:
    """``/docs``, ``/docs/oauth2-redirect`` and ``/redoc``, with assets from this service."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            hoist_defs(generate())  # generate() stores the document it returns
        return app.openapi_schema or generate()

    app.openapi = openapi  # type: ignore[method-assign]
    app.mount(ASSETS_URL, StaticFiles(directory=ASSETS), name="docs-assets")
    openapi_url = app.openapi_url or "/openapi.json"
    redirect_url = "/docs/oauth2-redirect"

    @app.get("/docs", include_in_schema=False)
    async def swagger(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return _own_only(
            get_swagger_ui_html(
                openapi_url=f"{root}{openapi_url}",
                title=f"{app.title} - Swagger UI",
                oauth2_redirect_url=f"{root}{redirect_url}",
                swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
                swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
                swagger_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
                # The key given to "Authorize" survives a reload of the page.
                swagger_ui_parameters={"persistAuthorization": True},
            )
        )

    @app.get(redirect_url, include_in_schema=False)
    async def swagger_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return _own_only(
            get_redoc_html(
                openapi_url=f"{root}{openapi_url}",
                title=f"{app.title} - ReDoc",
                redoc_js_url=f"{root}{ASSETS_URL}/redoc.standalone.js",
                redoc_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
                with_google_fonts=False,
            )
        )
