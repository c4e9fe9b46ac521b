"""HTTP for geofences: imports, listing, read and delete (admin keys)."""

from __future__ import annotations

from typing import Annotated, Any

import anyio.to_thread
from fastapi import APIRouter, Depends, Path, Query, Request, Response, UploadFile

from service.auth import Role
from service.errors import InvalidInput
from service.fences import service
from service.fences.repository import Near
from service.fences.schemas import FenceList, FencePublic, ImportOut
from service.http.auth import require
from service.limits import NO_CONTROL
from service.metrics import time_import

router = APIRouter(prefix="/v1/geofences", tags=["geofences"])
AdminKey = Annotated[Role, Depends(require(Role.admin))]
StoreId = Annotated[str, Path(min_length=1, max_length=128, pattern=NO_CONTROL)]


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
    cursor: Annotated[
        str | None,
        Query(max_length=256, pattern=NO_CONTROL, description="next_cursor of the previous page"),
    ] = None,
    tag: Annotated[str | None, Query(max_length=128, pattern=NO_CONTROL)] = None,
    near_lat: Annotated[float | None, Query(ge=-90, le=90)] = None,
    near_lng: Annotated[float | None, Query(ge=-180, le=180)] = None,
    within_m: Annotated[float | None, Query(gt=0, le=500_000)] = None,
) -> dict[str, Any]:
    """Paged by store_id (``cursor``), or with ``near_lat``/``near_lng`` and ``within_m`` the
    fences whose store point lies within ``within_m`` metres, closest first (``limit`` of
    them, no cursor)."""
    given = {"near_lat": near_lat, "near_lng": near_lng, "within_m": within_m}
    missing = [name for name, value in given.items() if value is None]
    if 0 < len(missing) < 3:
        raise InvalidInput(
            "a search near a point needs near_lat, near_lng and within_m (metres)",
            [{"field": name, "reason": "missing"} for name in missing],
        )
    near = (
        Near(near_lat, near_lng, within_m)
        if near_lat is not None and near_lng is not None and within_m is not None
        else None
    )
    return await anyio.to_thread.run_sync(
        lambda: service.list_fences(
            _engine(request), limit=limit, cursor=cursor, tag=tag, near=near
        )
    )


@router.get("/{store_id}", response_model=FencePublic, summary="Read one geofence")
async def get_geofence(store_id: StoreId, request: Request, _: AdminKey) -> dict[str, Any]:
    return await anyio.to_thread.run_sync(lambda: service.get_fence(_engine(request), store_id))


@router.delete("/{store_id}", status_code=204, summary="Delete one geofence")
async def delete_geofence(store_id: StoreId, request: Request, _: AdminKey) -> Response:
    settings = request.app.state.settings
    version = await anyio.to_thread.run_sync(
        lambda: service.delete_fence(_engine(request), store_id, settings.index_log_keep_s)
    )
    await request.app.state.index_holder.wait_for(version)
    return Response(status_code=204)
