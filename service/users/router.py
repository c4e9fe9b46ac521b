"""HTTP for users: attributes and events (server keys), erasure (admin)."""

from __future__ import annotations

import contextlib
from typing import Annotated, Any

import anyio.from_thread
import anyio.to_thread
from fastapi import APIRouter, Depends, Path, Request, Response
from sqlalchemy.exc import SQLAlchemyError

from service.auth import Role
from service.errors import NotFound
from service.http.auth import require
from service.http.routing import JSONBodyRoute
from service.limits import NO_CONTROL
from service.metrics import set_pending_erasures
from service.users import service
from service.users.erasure import Eraser
from service.users.schemas import AttributesPatch, ErasureOut, UserEventIn, UserEventOut

router = APIRouter(prefix="/v1/users", tags=["users"], route_class=JSONBodyRoute)
ServerKey = Annotated[Role, Depends(require(Role.server))]
AdminKey = Annotated[Role, Depends(require(Role.admin))]
UserId = Annotated[str, Path(min_length=1, max_length=128, pattern=NO_CONTROL)]


@router.patch("/{user_id}", summary="Set user attributes (null removes one)")
async def patch_user(
    user_id: UserId, patch: AttributesPatch, request: Request, _: ServerKey
) -> dict[str, Any]:
    """A change of ``location_consent`` reaches the device-state store (Redis) inside the
    database transaction: when Redis is down the answer is 503 and nothing is written."""
    engine = request.app.state.engine
    store = request.app.state.state_store
    if "location_consent" not in patch.root:
        attrs = await anyio.to_thread.run_sync(
            lambda: service.patch_attributes(engine, user_id, patch.root)
        )
        return {"user_id": user_id, "attributes": attrs}
    withdrawn = patch.root["location_consent"] is False  # true, or null: absent means granted
    apply = store.deny if withdrawn else store.allow
    applied = False

    def to_redis() -> None:
        nonlocal applied
        anyio.from_thread.run(apply, user_id)
        applied = True

    try:
        attrs = await anyio.to_thread.run_sync(
            lambda: service.patch_attributes(engine, user_id, patch.root, to_redis)
        )
    except SQLAlchemyError:
        if applied and not withdrawn:
            # Redis allowed, the commit failed: deny again rather than process a user whose
            # stored answer may still be "no" (a denial left behind is the safe side).
            with contextlib.suppress(Exception):
                await store.deny(user_id)
        raise
    return {"user_id": user_id, "attributes": attrs}


@router.post(
    "/{user_id}/events", status_code=201, response_model=UserEventOut, summary="Record an event"
)
async def post_event(
    user_id: UserId, event: UserEventIn, request: Request, _: ServerKey
) -> dict[str, Any]:
    engine = request.app.state.engine
    tolerance = request.app.state.settings.future_tolerance_s
    return await anyio.to_thread.run_sync(
        lambda: service.record_event(engine, user_id, event, tolerance)
    )


@router.delete(
    "/{user_id}",
    status_code=204,
    summary="Erase a user's personal data",
    responses={202: {"model": ErasureOut, "description": "Accepted: the rest follows by itself"}},
)
async def delete_user(user_id: UserId, request: Request, _: AdminKey) -> Response:
    """Attributes, events, device state (every device linked to the user) and cap history
    go; offers and exposures stay, anonymized. 204 when all is erased. While Redis is down
    the database part is done and the answer is 202: the device state and cap history
    follow by themselves when Redis is back (``GET /v1/users/{user_id}/erasure``)."""
    eraser: Eraser = request.app.state.eraser
    outcome = await eraser.erase(user_id)
    if outcome.status == "not_found":
        raise NotFound(f"no data held for user {user_id!r}")
    erased = ",".join(f"{k}={v}" for k, v in outcome.counts.items())
    if outcome.status == "pending":
        set_pending_erasures(await anyio.to_thread.run_sync(eraser.pending))
        status = await anyio.to_thread.run_sync(eraser.status, user_id)
        return Response(
            ErasureOut.model_validate({"user_id": user_id, **(status or {})}).model_dump_json(),
            status_code=202,
            media_type="application/json",
            headers={"X-Erased": erased, "Location": f"/v1/users/{user_id}/erasure"},
        )
    return Response(status_code=204, headers={"X-Erased": erased})


@router.get("/{user_id}/erasure", response_model=ErasureOut, summary="An erasure's status")
async def get_erasure(user_id: UserId, request: Request, _: AdminKey) -> dict[str, Any]:
    """``pending`` until every step is done (Redis was down), then ``done``."""
    eraser: Eraser = request.app.state.eraser
    status = await anyio.to_thread.run_sync(eraser.status, user_id)
    if status is None:
        raise NotFound(f"no erasure was requested for user {user_id!r}")
    return {"user_id": user_id, **status}
