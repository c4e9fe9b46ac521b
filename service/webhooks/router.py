"""HTTP for webhook endpoints (admin keys): DESIGN §10."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import anyio.to_thread
from fastapi import APIRouter, Depends, Path, Query, Request, Response
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from service.auth import Role
from service.errors import InvalidInput
from service.events.types import EventType
from service.http.auth import require
from service.webhooks import service

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])
AdminKey = Annotated[Role, Depends(require(Role.admin))]
EndpointId = Annotated[str, Path(min_length=1, max_length=32)]
Tag = Annotated[str, Field(min_length=1, max_length=128)]


class WebhookCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1, max_length=2048, description="http(s) URL that gets the POSTs.")
    events: list[EventType] | None = Field(
        default=None, max_length=len(EventType), description="Event types; absent = all."
    )
    store_tags: list[Tag] | None = Field(
        default=None,
        max_length=100,
        description="Only events at stores with one of these tags (events about no store, "
        "such as user.erased, always); absent = every store.",
    )


class WebhookPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(default=None, min_length=1, max_length=2048)
    events: list[EventType] | None = Field(default=None, max_length=len(EventType))
    store_tags: list[Tag] | None = Field(default=None, max_length=100)
    enabled: bool | None = Field(
        default=None, description="false pauses deliveries; true resumes them (after a 410 too)."
    )


class WebhookPublic(BaseModel):
    id: str
    url: str
    events: list[str] | None = Field(description="null: every event type.")
    store_tags: list[str] | None = Field(description="null: every store.")
    enabled: bool
    disabled_reason: str | None
    disabled_at: str | None
    failing_since: str | None
    previous_secret_expires_at: str | None = Field(
        description="Until then deliveries are also signed with the secret before the last "
        "rotation."
    )
    created_at: str | None
    updated_at: str | None
    pending: int = Field(description="Deliveries waiting (due or retrying).")
    oldest_pending_recorded_at: str | None


class WebhookCreated(WebhookPublic):
    secret: str = Field(description="whsec_…: shown in this answer only.")


class WebhookList(BaseModel):
    webhooks: list[WebhookPublic]


class SecretRotated(BaseModel):
    id: str
    secret: str = Field(description="The new whsec_… secret: shown in this answer only.")
    previous_secret_expires_at: str | None


class DeliveryPublic(BaseModel):
    id: int
    event_id: str = Field(description="The webhook-id header of every attempt.")
    event_type: str | None
    status: Literal["pending", "delivered", "failed"]
    attempts: int
    replay: bool
    created_at: str | None
    next_attempt_at: str | None
    last_attempt_at: str | None
    last_status_code: int | None
    last_error: str | None
    delivered_at: str | None


class DeliveryList(BaseModel):
    deliveries: list[DeliveryPublic]
    next_cursor: str | None


class Replayed(BaseModel):
    id: str
    since: str
    queued: int


@router.post("", status_code=201, response_model=WebhookCreated, summary="Add an endpoint")
async def create_webhook(body: WebhookCreate, request: Request, _: AdminKey) -> dict[str, Any]:
    """The answer holds the endpoint's signing secret, the only time it is shown."""
    engine = request.app.state.engine
    return await anyio.to_thread.run_sync(
        lambda: service.create_endpoint(engine, body.url, body.events, body.store_tags)
    )


@router.get("", response_model=WebhookList, summary="List endpoints")
async def list_webhooks(request: Request, _: AdminKey) -> dict[str, Any]:
    engine = request.app.state.engine
    return {"webhooks": await anyio.to_thread.run_sync(service.list_endpoints, engine)}


@router.get("/{endpoint_id}", response_model=WebhookPublic, summary="Read an endpoint")
async def get_webhook(endpoint_id: EndpointId, request: Request, _: AdminKey) -> dict[str, Any]:
    engine = request.app.state.engine
    return await anyio.to_thread.run_sync(service.get_endpoint, engine, endpoint_id)


@router.patch("/{endpoint_id}", response_model=WebhookPublic, summary="Change an endpoint")
async def patch_webhook(
    endpoint_id: EndpointId, body: WebhookPatch, request: Request, _: AdminKey
) -> dict[str, Any]:
    """Only the fields sent change; ``events`` / ``store_tags`` set to null mean "all"."""
    engine = request.app.state.engine
    changes = {name: getattr(body, name) for name in body.model_fields_set}
    return await anyio.to_thread.run_sync(
        lambda: service.patch_endpoint(engine, endpoint_id, changes)
    )


@router.delete("/{endpoint_id}", status_code=204, summary="Delete an endpoint")
async def delete_webhook(endpoint_id: EndpointId, request: Request, _: AdminKey) -> Response:
    """Its pending deliveries are dropped with it (on purpose: not counted as dropped)."""
    engine = request.app.state.engine
    await anyio.to_thread.run_sync(service.delete_endpoint, engine, endpoint_id)
    return Response(status_code=204)


@router.post(
    "/{endpoint_id}/secret/rotate", response_model=SecretRotated, summary="Rotate the secret"
)
async def rotate_secret(endpoint_id: EndpointId, request: Request, _: AdminKey) -> dict[str, Any]:
    """A new secret, shown once. For ``webhook_secret_overlap_s`` (24 h) deliveries carry
    signatures with both the new and the old secret, so receivers can switch at leisure."""
    state = request.app.state
    overlap = state.settings.webhook_secret_overlap_s
    return await anyio.to_thread.run_sync(service.rotate_secret, state.engine, endpoint_id, overlap)


@router.get(
    "/{endpoint_id}/deliveries", response_model=DeliveryList, summary="An endpoint's deliveries"
)
async def list_deliveries(
    endpoint_id: EndpointId,
    request: Request,
    _: AdminKey,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[
        str | None, Query(max_length=20, description="The previous page's next_cursor.")
    ] = None,
    status: Literal["pending", "delivered", "failed"] | None = None,
) -> dict[str, Any]:
    """Newest first."""
    before = None
    if cursor is not None:
        if not cursor.isdigit():
            raise InvalidInput(
                "cursor must be a next_cursor from a previous page",
                [{"field": "cursor", "reason": "not a cursor"}],
            )
        before = int(cursor)
    engine = request.app.state.engine
    return await anyio.to_thread.run_sync(
        lambda: service.list_deliveries(engine, endpoint_id, limit, before, status)
    )


@router.post(
    "/{endpoint_id}/replay", status_code=202, response_model=Replayed, summary="Deliver again"
)
async def replay(
    endpoint_id: EndpointId,
    request: Request,
    _: AdminKey,
    since: Annotated[AwareDatetime, Query(description="RFC 3339; events recorded since then.")],
) -> dict[str, Any]:
    """Queue every event recorded since ``since`` (and still kept: ``event_retention_s``)
    that the endpoint subscribes to, under the same ids."""
    engine = request.app.state.engine
    return await anyio.to_thread.run_sync(service.replay, engine, endpoint_id, since)
