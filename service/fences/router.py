"""HTTP for geofences: imports, listing, read and delete (admin keys)."""

from __future__ import annotations

from typing import Annotated, Any

import anyio.to_thread
from fastapi import APIRouter, Depends, Query, Request, Response, UploadFile

from service.auth import Role, require
from service.errors import InvalidInput
from service.fences import service
from service.fences.repository import Near
from service.fences.schemas import FenceList, FencePublic, ImportOut
from service.observability import time_import

router = APIRouter(prefix="/v1/geofences", tags=["geofences"])
AdminKey = Annotated[Role, Depends(require(Role.admin))]


def _engine(request: Request) -> Any:
    return request.app.state.engine


@router.post("/import", response_model=ImportOut, summary="Import a CSV or GeoJSON file")
async def import_geofences(
    request: Request,
    file: UploadFile,
    _: AdminKey,
    mode: service.ImportMode = "upsert",
    dry_run: bool = False,
    on_error: service.OnError = "abort",
) -> dict[str, Any]:
    """All or nothing by default; answers once this replica serves the new fences."""
    settings = request.app.state.settings
    with time_import("geofences"):
        result = await anyio.to_thread.run_sync(
            lambda: service.import_fences(
                _engine(request),
                file.file,
                file.filename,
                mode=mode,
                dry_run=dry_run,
                on_error=on_error,
                max_details=settings.import_max_error_details,
                delta_max=settings.index_delta_max,
                log_keep_s=settings.index_log_keep_s,
            )
        )
    if not dry_run:
        await request.app.state.index_holder.wait_for(result.version)
    return result.to_dict()


@router.get("", response_model=FenceList, summary="List geofences")
async def list_geofences(
    request: Request,
    _: AdminKey,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
    tag: str | None = None,
    near_lat: Annotated[float | None, Query(ge=-90, le=90)] = None,
    near_lng: Annotated[float | None, Query(ge=-180, le=180)] = None,
    within_m: Annotated[float, Query(gt=0, le=500_000)] = 1000.0,
) -> dict[str, Any]:
    """Paged by store_id (``cursor``), or with ``near_lat``/``near_lng`` the fences whose store
    point lies within ``within_m`` metres, closest first (``limit`` of them, no cursor)."""
    if (near_lat is None) != (near_lng is None):
        raise InvalidInput(
            "give both near_lat and near_lng, or neither",
            [{"field": "near_lat" if near_lat is None else "near_lng", "reason": "missing"}],
        )
    near = (
        Near(near_lat, near_lng, within_m)
        if near_lat is not None and near_lng is not None
        else None
    )
    return await anyio.to_thread.run_sync(
        lambda: service.list_fences(
            _engine(request), limit=limit, cursor=cursor, tag=tag, near=near
        )
    )


@router.get("/{store_id}", response_model=FencePublic, summary="Read one geofence")
async def get_geofence(store_id: str, request: Request, _: AdminKey) -> dict[str, Any]:
    return await anyio.to_thread.run_sync(lambda: service.get_fence(_engine(request), store_id))


@router.delete("/{store_id}", status_code=204, summary="Delete one geofence")
async def delete_geofence(store_id: str, request: Request, _: AdminKey) -> Response:
    settings = request.app.state.settings
    version = await anyio.to_thread.run_sync(
        lambda: service.delete_fence(_engine(request), store_id, settings.index_log_keep_s)
    )
    await request.app.state.index_holder.wait_for(version)
    return Response(status_code=204)
