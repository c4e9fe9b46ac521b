"""HTTP plumbing of the console: templates, security headers, static assets, sessions.

Every console response carries a Content-Security-Policy that allows only this origin
(plus the base map's tile host when one is set): with no inline script allowed, markup
that slipped into a store name or a campaign title could not run even if it were not
escaped (it is: Jinja autoescapes, and the scripts only ever set ``textContent``).
"""

from __future__ import annotations

import gzip
import hashlib
import mimetypes
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import anyio.to_thread
from fastapi import Depends, Request
from fastapi.responses import HTMLResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape

from service.console.sessions import (
    COOKIE,
    ConsoleSession,
    SessionCache,
    find_session,
    same_token,
)
from service.errors import DomainError, Forbidden, Unauthorized
from service.settings import Settings

HERE = Path(__file__).resolve().parent
STATIC = HERE / "static"
TEMPLATES = HERE / "templates"
PREFIX = "/console"


class PageError(DomainError):
    """A domain error on a page (not the JSON API): answered with an HTML page."""

    def __init__(self, exc: DomainError) -> None:
        super().__init__(exc.message, exc.details)
        self.status_code = exc.status_code
        self.code = exc.code


class SignInRequired(Exception):
    """A page asked for without a live session: answered with a redirect to sign in."""

    def __init__(self, next_path: str) -> None:
        super().__init__(next_path)
        self.next_path = next_path


# --- static assets --------------------------------------------------------------------


@dataclass(frozen=True)
class Asset:
    body: bytes
    gzipped: bytes | None
    media_type: str
    etag: str


class Assets:
    """The package's static files, read once; URLs carry a content hash (cached for a year)."""

    def __init__(self, root: Path = STATIC) -> None:
        self.files: dict[str, Asset] = {}
        for path in sorted(root.rglob("*")):
            if not path.is_file():
                continue
            rel = path.relative_to(root).as_posix()
            body = path.read_bytes()
            media = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            if path.suffix == ".js":
                media = "text/javascript"
            if media.startswith("text/"):
                media += "; charset=utf-8"
            packed = gzip.compress(body, 6, mtime=0) if len(body) > 1024 else None
            self.files[rel] = Asset(body, packed, media, hashlib.sha256(body).hexdigest()[:16])

    def url(self, rel: str) -> str:
        return f"{PREFIX}/static/{rel}?v={self.files[rel].etag}"

    def response(self, request: Request, rel: str) -> Response:
        asset = self.files.get(rel)
        if asset is None:
            return Response("not found", 404, media_type="text/plain")
        etag = f'"{asset.etag}"'
        versioned = request.query_params.get("v") == asset.etag
        headers = {
            "ETag": etag,
            "Cache-Control": "public, max-age=31536000, immutable" if versioned else "no-cache",
            "X-Content-Type-Options": "nosniff",
            "Vary": "Accept-Encoding",
        }
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=headers)
        body = asset.body
        if asset.gzipped is not None and "gzip" in request.headers.get("accept-encoding", ""):
            body = asset.gzipped
            headers["Content-Encoding"] = "gzip"
        return Response(body, media_type=asset.media_type, headers=headers)


# --- pages ----------------------------------------------------------------------------


def basemap_origin(settings: Settings) -> str | None:
    url = settings.console_basemap_url
    if not url:
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    return f"{parts.scheme}://{parts.netloc}"


def content_security_policy(settings: Settings) -> str:
    extra = basemap_origin(settings)
    tiles = f" {extra}" if extra else ""
    return (
        "default-src 'self'; script-src 'self'; style-src 'self'; "
        f"img-src 'self' data: blob:{tiles}; connect-src 'self'{tiles}; "
        "worker-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
        "form-action 'self'; frame-ancestors 'none'"
    )


def secure(response: Response, settings: Settings, cache: str = "no-store") -> Response:
    response.headers["Content-Security-Policy"] = content_security_policy(settings)
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers.setdefault("Cache-Control", cache)
    return response


class Pages:
    def __init__(self, settings: Settings, assets: Assets) -> None:
        self.settings = settings
        self.assets = assets
        self.env = Environment(
            loader=FileSystemLoader(TEMPLATES),
            autoescape=select_autoescape(default=True, default_for_string=True),
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.globals["static"] = assets.url
        self.env.globals["prefix"] = PREFIX
        self.env.filters["number"] = _number
        self.env.filters["pct"] = _pct
        self.env.filters["duration"] = duration
        self.env.filters["when"] = when
        self.env.filters["age"] = age

    def render(
        self,
        name: str,
        request: Request,
        session: ConsoleSession | None,
        status: int = 200,
        **context: Any,
    ) -> HTMLResponse:
        html = self.env.get_template(name).render(
            request=request, session=session, csrf=session.csrf if session else "", **context
        )
        return secure(HTMLResponse(html, status), self.settings)  # type: ignore[return-value]


def _number(value: Any) -> str:
    return "–" if value is None else f"{value:,}"


def _pct(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "–"
    return f"{value * 100:+.1f} %" if signed else f"{value * 100:.1f} %"


def when(iso: str | None) -> str:
    """``2026-11-30T09:15:02.123Z`` → ``2026-11-30 09:15:02 UTC`` (the console speaks UTC)."""
    if not iso:
        return "–"
    return f"{iso[:10]} {iso[11:19]} UTC"


def age(iso: str | None, now: datetime | None = None) -> str:
    """How long ago an RFC 3339 time was, roughly: ``40 s``, ``12 min``, ``3 h``, ``2 d``.

    >>> age("2026-01-01T00:00:00Z", datetime(2026, 1, 1, 2, 30, tzinfo=UTC))
    '2 h'
    """
    if not iso:
        return "–"
    then = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    s = max(0, int(((now or datetime.now(UTC)) - then).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if s >= size:
            return f"{s // size} {unit}"
    return f"{s} s"


def duration(seconds: Any) -> str:
    """``86400`` → ``1d``; ``5400`` → ``90m``."""
    s = int(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size and s % size == 0:
            return f"{s // size}{unit}"
    return f"{s}s"


# --- sessions and CSRF ----------------------------------------------------------------


async def _session(request: Request) -> ConsoleSession | None:
    if hasattr(request.state, "console_session"):
        cached: ConsoleSession | None = request.state.console_session
        return cached
    cookie = request.cookies.get(COOKIE, "")
    found = None
    cache: SessionCache | None = getattr(request.app.state, "console_session_cache", None)
    if cookie:
        found = cache.get(cookie) if cache is not None else None
        if found is None:
            found = await anyio.to_thread.run_sync(find_session, request.app.state.engine, cookie)
            if found is not None and cache is not None:
                cache.put(cookie, found)
    request.state.console_session = found
    return found


async def page_session(request: Request) -> ConsoleSession:
    """A page's session, or a redirect to the sign-in page (and back here afterwards)."""
    session = await _session(request)
    if session is None:
        raise SignInRequired(request.url.path)
    return session


async def api_session(request: Request) -> ConsoleSession:
    """A console API call's session, or a 401 in the API's error shape."""
    session = await _session(request)
    if session is None:
        raise Unauthorized("sign in to the console first (the session is missing or expired)")
    return session


def check_origin(request: Request) -> None:
    """A state-changing request from another origin is refused (besides the CSRF token)."""
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        if origin == "null":
            raise Forbidden("cross-origin request refused")
        return
    host = request.headers.get("host", "")
    if urlsplit(origin).netloc != host:
        raise Forbidden("cross-origin request refused")


async def _csrf_checked(request: Request, session: ConsoleSession) -> ConsoleSession:
    check_origin(request)
    token = request.headers.get("x-csrf-token")
    if token is None and request.headers.get("content-type", "").startswith(
        ("application/x-www-form-urlencoded", "multipart/form-data")
    ):
        form = await request.form()
        value = form.get("csrf")
        token = value if isinstance(value, str) else None
    if not same_token(token, session.csrf):
        raise Forbidden(
            "this form has expired or did not come from the console (missing or wrong CSRF "
            "token): reload the page and try again"
        )
    return session


async def page_csrf(
    request: Request, session: Annotated[ConsoleSession, Depends(page_session)]
) -> ConsoleSession:
    try:
        return await _csrf_checked(request, session)
    except DomainError as exc:
        raise PageError(exc) from None


async def api_csrf(
    request: Request, session: Annotated[ConsoleSession, Depends(api_session)]
) -> ConsoleSession:
    return await _csrf_checked(request, session)


PageSession = Annotated[ConsoleSession, Depends(page_session)]
PageCsrf = Annotated[ConsoleSession, Depends(page_csrf)]
ApiSession = Annotated[ConsoleSession, Depends(api_session)]
ApiCsrf = Annotated[ConsoleSession, Depends(api_csrf)]
