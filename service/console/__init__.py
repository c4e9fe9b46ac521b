"""The marketer console (DESIGN §9), served by the service itself at ``/console``."""

from __future__ import annotations

from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response

from service.console.router import build_router
from service.console.sessions import SessionCache
from service.console.web import PREFIX, PageError, SignInRequired, secure
from service.settings import Settings


def mount(app: FastAPI, settings: Settings) -> None:
    """Serve the console at ``/console`` on ``app`` (same services, same process)."""
    router, pages = build_router(settings)
    app.include_router(router)
    if not settings.sqlalchemy_url().startswith("postgresql"):
        app.state.console_session_cache = SessionCache(settings.key_cache_s)

    async def _sign_in(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, SignInRequired)
        target = f"{PREFIX}/sign-in?next={quote(exc.next_path, safe='/')}"
        return secure(RedirectResponse(target, 303), settings)

    async def _page_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, PageError)
        return pages.render("error.html", request, None, exc.status_code, message=exc.message)

    app.add_exception_handler(SignInRequired, _sign_in)
    app.add_exception_handler(PageError, _page_error)
