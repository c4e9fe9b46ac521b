"""The FastAPI dependency that checks a request's API key."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import Request

from service.auth import Role, allowing, check_key


def require(*roles: Role) -> Callable[[Request], Awaitable[Role]]:
    """Dependency: the request carries a key of one of ``roles`` (admin passes everywhere)."""
    allowed = allowing(*roles)

    async def _check(request: Request) -> Role:
        header = request.headers.get("authorization", "")
        return await check_key(request.app.state.keys, header, allowed)

    return _check
