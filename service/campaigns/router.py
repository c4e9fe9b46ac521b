"""HTTP for campaigns: import, read, pause/resume, report (admin keys)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import anyio.to_thread
from fastapi import APIRouter, Depends, Path, Query, Request, UploadFile
from pydantic import BaseModel

from service.auth import Role
from service.campaigns import service
from service.http.auth import require
from service.http.routing import JSONBodyRoute
from service.limits import NO_CONTROL
from service.metrics import time_import
from service.offers.report import campaign_report

router = APIRouter(prefix="/v1/campaigns", tags=["campaigns"], route_class=JSONBodyRoute)
AdminKey = Annotated[Role, Depends(require(Role.admin))]
CampaignId = Annotated[str, Path(min_length=1, max_length=64, pattern=NO_CONTROL)]


class CampaignPatch(BaseModel):
    status: Literal["active", "paused"]


@router.post("/import", summary="Import a YAML or JSON campaigns file")
async def import_campaigns(
    request: Request, file: UploadFile, _: AdminKey, dry_run: bool = False
) -> dict[str, Any]:
    """Validated whole first: any mistake is a 422 naming campaign and field, nothing written.
    Campaigns are upserted by id; the file's ``policies`` replace the current ones."""
    data = await file.read()
    engine = request.app.state.engine
    with time_import("campaigns"):
        result = await anyio.to_thread.run_sync(
            lambda: service.import_campaigns(engine, data, file.filename, dry_run=dry_run)
        )
    if not dry_run:
        await request.app.state.campaign_holder.refresh()
    return result


@router.get("", summary="List campaigns and the policies")
async def list_campaigns(request: Request, _: AdminKey) -> dict[str, Any]:
    return await anyio.to_thread.run_sync(service.list_campaigns, request.app.state.engine)


@router.get("/{campaign_id}", summary="Read one campaign")
async def get_campaign(campaign_id: CampaignId, request: Request, _: AdminKey) -> dict[str, Any]:
    return await anyio.to_thread.run_sync(
        service.get_campaign, request.app.state.engine, campaign_id
    )


@router.patch("/{campaign_id}", summary="Pause or resume a campaign")
async def patch_campaign(
    campaign_id: CampaignId, patch: CampaignPatch, request: Request, _: AdminKey
) -> dict[str, Any]:
    out = await anyio.to_thread.run_sync(
        service.set_status, request.app.state.engine, campaign_id, patch.status
    )
    await request.app.state.campaign_holder.refresh()
    return out


@router.get("/{campaign_id}/report", summary="Exposed, issued, redeemed, converted; lift")
async def report(
    campaign_id: CampaignId,
    request: Request,
    _: AdminKey,
    attribution_h: Annotated[float, Query(gt=0, le=24 * 90)] = 72.0,
) -> dict[str, Any]:
    engine = request.app.state.engine
    return await anyio.to_thread.run_sync(
        lambda: campaign_report(engine, campaign_id, attribution_h)
    )
