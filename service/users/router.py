"""HTTP for users: attributes and events (server keys), erasure (admin)."""

from __future__ import annotations

from typing import Annotated, Any

import anyio.to_thread
from fastapi import APIRouter, Depends, Path, Request, Response

from service.auth import Role
from service.errors import NotFound
from service.http.auth import require
from service.users import service
from service.users.schemas import AttributesPatch, UserEventIn, UserEventOut

router = APIRouter(prefix="/v1/users", tags=["users"])
ServerKey = Annotated[Role, Depends(require(Role.server))]
AdminKey = Annotated[Role, Depends(require(Role.admin))]
UserId = Annotated[str, Path(min_length=1, max_length=128)]


@router.patch("/{user_id}", summary="Set user attributes (null removes one)")
async def patch_user(
    user_id: UserId, patch: AttributesPatch, request: Request, _: ServerKey
) -> dict[str, Any]:
    engine = request.app.state.engine
    attrs = await anyio.to_thread.run_sync(
        lambda: service.patch_attributes(engine, user_id, patch.root)
    )
    store = request.app.state.state_store
    if patch.root.get("location_consent") is False:
        await store.deny(user_id)
    elif "location_consent" in patch.root:  # true, or removed (absent means granted)
        await store.allow(user_id)
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


@router.delete("/{user_id}", summary="Erase a user's personal data")
async def delete_user(user_id: UserId, request: Request, _: AdminKey) -> Response:
    state = request.app.state
    counts, devices = await anyio.to_thread.run_sync(
        lambda: service.erase_user(state.engine, user_id)
    )
    linked = await state.state_store.devices_of(user_id)
    for device_id in {*devices, *linked, user_id}:
        await state.state_store.forget(device_id)
    await state.cap_store.forget_user(user_id)
    await state.state_store.allow(user_id)
    if not any(counts.values()) and not linked:
        raise NotFound(f"no data held for user {user_id!r}")
    return Response(
        status_code=204, headers={"X-Erased": ",".join(f"{k}={v}" for k, v in counts.items())}
    )
