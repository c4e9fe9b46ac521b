"""The FastAPI dependency that checks a request's API key (and declares the Bearer scheme)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Request, Security
from fastapi.security import HTTPAuthorizationCredentials

from service.auth import Role, allowing, check_key
from service.http.docs import BEARER


def require(*roles: Role) -> Callable[..., Awaitable[Role]]:
    """Dependency: the request carries a key of one of ``roles`` (admin passes everywhere).

    The ``BEARER`` security dependency only documents the scheme (``auto_error=False``);
    the header is checked here, with the service's own 401 and 403 answers.
    """
    allowed = allowing(*roles)

    async def _check(
        request: Request, _: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)]
    ) -> Role:
        header = request.headers.get("authorization", "")
        return await check_key(request.app.state.keys, header, allowed)

    return _check
