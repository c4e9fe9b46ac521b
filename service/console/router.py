"""The marketer console's routes (DESIGN §9): pages, the map's tiles, and its small JSON API;
and the Webhooks pages (DESIGN §10) on the service functions the ``/v1/webhooks`` API calls.

Pages are rendered on the server (Jinja, autoescaped); the map, the file drop and the
"why" map use small scripts from ``static/``. Every route needs a console session except
the sign-in page; every state-changing request needs the session's CSRF token.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal
from urllib.parse import quote, urlencode

import anyio.to_thread
from fastapi import APIRouter, Body, FastAPI, Form, Path, Query, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from pydantic import AwareDatetime, BaseModel, Field, TypeAdapter, ValidationError

from service.campaigns import service as campaigns
from service.campaigns.rules import targets
from service.console import repository as repo
from service.console import tiles, uploads, webhooks, why
from service.console.charts import Series, daily_bars
from service.console.sessions import (
    COOKIE,
    LOGIN_COOKIE,
    SessionCache,
    check_admin_key,
    close_session,
    open_session,
    same_token,
)
from service.console.web import (
    PREFIX,
    ApiCsrf,
    ApiSession,
    Assets,
    PageCsrf,
    PageError,
    Pages,
    PageSession,
    SignInRequired,
    check_origin,
    duration,
    secure,
)
from service.db import versions
from service.errors import DomainError, InvalidFile, InvalidInput, NotFound
from service.fences import service as fences
from service.http.errors import invalid_request
from service.offers.report import campaign_report
from service.settings import Settings
from service.webhooks import service as webhook_service
from service.webhooks.router import WebhookCreate

TILE_CACHE_SIZE = 2048
CHART_DAYS = 30
EndpointId = Annotated[str, Path(min_length=1, max_length=32)]
SINCE = TypeAdapter(AwareDatetime)  # the type of the API's replay?since=


class UploadIn(BaseModel):
    kind: str = Field(max_length=16)
    filename: str = Field(max_length=255)
    size: int


class RunIn(BaseModel):
    mode: Literal["upsert", "replace"] = "upsert"
    on_error: Literal["abort", "skip"] = "abort"


def _state(request: Request) -> Any:
    return request.app.state


def build_router(settings: Settings) -> tuple[APIRouter, Pages]:
    """The console's routes and page renderer, for :func:`service.console.mount`."""
    assets = Assets()
    pages = Pages(settings, assets)
    router = APIRouter(prefix=PREFIX, include_in_schema=False)
    tile_cache: OrderedDict[tuple[Any, ...], bytes] = OrderedDict()
    columns = tiles.ColumnsCache()
    cells_built: set[int] = set()  # fence versions whose map cells exist (PostgreSQL)
    # Upload parts fit under the body limit with room for the request's other bytes.
    chunk_bytes = max(1024, min(settings.max_body_bytes - 8 * 1024, 4 * 1024 * 1024))

    def is_https(request: Request) -> bool:
        return request.url.scheme == "https"

    # --- static, sign-in, sign-out ----------------------------------------------------

    @router.get("/static/{path:path}")
    async def static(request: Request, path: str) -> Response:
        return assets.response(request, path)

    @router.get("")
    @router.get("/")
    async def home() -> Response:
        return RedirectResponse(f"{PREFIX}/stores", 303)

    @router.get("/sign-in")
    async def sign_in_page(request: Request, next: str = "", signed_out: bool = False) -> Response:
        return _sign_in(request, next, None, 200, signed_out=signed_out)

    def _sign_in(
        request: Request, next_path: str, error: str | None, status: int, **extra: Any
    ) -> Response:
        token = secrets.token_urlsafe(24)
        response = pages.render(
            "sign_in.html", request, None, status, login_csrf=token,
            next_path=_safe_next(next_path), error=error, **extra,
        )  # fmt: skip
        response.set_cookie(
            LOGIN_COOKIE, token, max_age=3600, path=f"{PREFIX}/sign-in",
            httponly=True, samesite="strict", secure=is_https(request),
        )  # fmt: skip
        return response

    @router.post("/sign-in")
    async def sign_in(
        request: Request,
        key: Annotated[str, Form(max_length=512)] = "",
        csrf: Annotated[str, Form(max_length=128)] = "",
        next: Annotated[str, Form(max_length=512)] = "",
    ) -> Response:
        try:
            check_origin(request)
        except DomainError as exc:
            return _sign_in(request, next, exc.message, 403)
        if not same_token(csrf, request.cookies.get(LOGIN_COOKIE, "")):
            return _sign_in(request, next, "The sign-in form expired; please try again.", 403)
        try:
            await check_admin_key(_state(request).keys, key)
            session_id, _ = await anyio.to_thread.run_sync(
                open_session, _state(request).engine, key, settings.console_session_ttl_s
            )
        except DomainError as exc:
            return _sign_in(request, next, exc.message, exc.status_code)
        response = RedirectResponse(_safe_next(next), 303)
        response.set_cookie(
            COOKIE, session_id, max_age=int(settings.console_session_ttl_s), path=PREFIX,
            httponly=True, samesite="strict", secure=is_https(request),
        )  # fmt: skip
        response.delete_cookie(
            LOGIN_COOKIE, path=f"{PREFIX}/sign-in", httponly=True, samesite="strict",
            secure=is_https(request),
        )  # fmt: skip
        return secure(response, settings)

    @router.post("/sign-out")
    async def sign_out(request: Request, session: PageCsrf) -> Response:
        await anyio.to_thread.run_sync(close_session, _state(request).engine, session.id_hash)
        cache = getattr(_state(request), "console_session_cache", None)
        if cache is not None:
            cache.drop(session.id_hash)
        response = RedirectResponse(f"{PREFIX}/sign-in?signed_out=1", 303)
        response.delete_cookie(
            COOKIE, path=PREFIX, httponly=True, samesite="strict", secure=is_https(request)
        )
        return secure(response, settings)

    # --- stores: map, tiles, search, details -----------------------------------------

    async def fence_version(request: Request) -> Any:
        """The fence data version the map shows: the table's on PostgreSQL (tiles come from
        it), the served index's on the embedded default."""
        state = _state(request)
        engine = state.engine
        if engine.dialect.name != "postgresql":
            return state.index_holder.version

        def stored() -> int:
            with engine.connect() as conn:
                return versions.current(conn, versions.FENCES)

        return await anyio.to_thread.run_sync(stored)

    summary: dict[str, Any] = {}  # the fence version's tags and count (a full scan each)

    @router.get("/stores")
    async def stores_page(request: Request, session: PageSession) -> Response:
        engine = _state(request).engine
        version = await fence_version(request)

        def load() -> tuple[list[str], int]:
            with engine.connect() as conn:
                return repo.all_tags(conn), repo.fence_count(conn)

        if summary.get("version") != version:
            tags, count = await anyio.to_thread.run_sync(load)
            summary.update(version=version, tags=tags, count=count)
        tags, count = summary["tags"], summary["count"]
        return pages.render(
            "stores.html", request, session, tags=tags, fence_count=count,
            basemap_url=settings.console_basemap_url or "",
            basemap_attribution=settings.console_basemap_attribution, nav="stores",
        )  # fmt: skip

    @router.get("/tiles/{z}/{x}/{y}.mvt")
    async def tile(
        request: Request,
        z: int,
        x: int,
        y: int,
        _: ApiSession,
        tag: Annotated[str | None, Query(max_length=128)] = None,
    ) -> Response:
        state = _state(request)
        engine = state.engine
        tag = tag or None
        try:
            tiles.check_tile(z, x, y)
        except tiles.TileOutOfRange as exc:
            raise NotFound(str(exc)) from None
        version = await fence_version(request)
        etag = f'"{version}-{z}-{x}-{y}-{tag or ""}"'
        headers = {"ETag": etag, "Cache-Control": "private, no-cache"}
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=headers)
        key = (version, z, x, y, tag)
        data = tile_cache.get(key)
        if data is None:
            if engine.dialect.name == "postgresql":
                cells: int | None = None
                if z <= tiles.SUMMARY_Z and not tag:
                    if version not in cells_built:
                        cells_built.add(
                            await anyio.to_thread.run_sync(tiles.build_pg_cells, engine)
                        )
                    cells = version if version in cells_built else None

                def from_postgis() -> bytes:
                    with engine.connect() as conn:
                        return tiles.pg_tile(conn, z, x, y, tag, cells)

                data = await anyio.to_thread.run_sync(from_postgis)
            else:
                index = state.index_holder.index
                data = await anyio.to_thread.run_sync(
                    lambda: tiles.memory_tile(columns.get(index), z, x, y, tag)
                )
            tile_cache[key] = data
            while len(tile_cache) > TILE_CACHE_SIZE:
                tile_cache.popitem(last=False)
        else:
            tile_cache.move_to_end(key)
        return Response(data, media_type="application/vnd.mapbox-vector-tile", headers=headers)

    @router.get("/api/stores")
    async def search(
        request: Request,
        _: ApiSession,
        q: Annotated[str, Query(max_length=128)] = "",
        tag: Annotated[str | None, Query(max_length=128)] = None,
    ) -> dict[str, Any]:
        engine = _state(request).engine
        q = q.strip()
        if not q:
            return {"items": []}

        def run() -> list[Any]:
            with engine.connect() as conn:
                return repo.search_stores(conn, q, tag or None, 20)

        rows = await anyio.to_thread.run_sync(run)
        return {
            "items": [
                {"store_id": r.store_id, "name": r.name, "lat": r.lat, "lng": r.lng,
                 "kind": r.kind, "radius_m": r.radius_m}
                for r in rows
            ]
        }  # fmt: skip

    @router.get("/api/stores/{store_id}")
    async def store_details(request: Request, store_id: str, _: ApiSession) -> dict[str, Any]:
        state = _state(request)
        fence = await anyio.to_thread.run_sync(fences.get_fence, state.engine, store_id)
        targeting = [
            {"id": c.id, "name": c.name, "status": c.status}
            for c in state.campaign_holder.current.campaigns
            if targets(c, store_id, fence["tags"])
        ]
        return {"store": fence, "campaigns": targeting}

    # --- imports ----------------------------------------------------------------------

    @router.get("/imports")
    async def imports_page(request: Request, session: PageSession) -> Response:
        return pages.render(
            "imports.html", request, session, nav="imports", chunk_bytes=chunk_bytes,
            max_upload=settings.max_upload_bytes,
        )  # fmt: skip

    @router.post("/api/uploads")
    async def create_upload(
        request: Request, session: ApiCsrf, body: Annotated[UploadIn, Body()]
    ) -> dict[str, Any]:
        out = await anyio.to_thread.run_sync(
            lambda: uploads.create(
                _state(request).engine, session.id_hash, body.kind, body.filename, body.size,
                settings.max_upload_bytes,
            )
        )  # fmt: skip
        return {**out, "chunk_bytes": chunk_bytes}

    @router.put("/api/uploads/{upload_id}/chunks/{seq}")
    async def put_chunk(
        request: Request, upload_id: str, seq: int, session: ApiCsrf
    ) -> dict[str, int]:
        data = await request.body()
        return await anyio.to_thread.run_sync(
            lambda: uploads.put_chunk(
                _state(request).engine, session.id_hash, upload_id, seq, data, chunk_bytes
            )
        )

    @router.get("/api/uploads/{upload_id}/progress")
    async def upload_progress(
        request: Request, upload_id: str, session: ApiSession
    ) -> dict[str, int]:
        return await anyio.to_thread.run_sync(
            uploads.progress, _state(request).engine, session.id_hash, upload_id
        )

    async def run_upload(
        request: Request, upload_id: str, session_hash: str, apply: bool, body: RunIn
    ) -> Response:
        state = _state(request)
        try:
            result = await anyio.to_thread.run_sync(
                lambda: uploads.run(
                    state.engine, session_hash, upload_id, apply=apply, mode=body.mode,
                    on_error=body.on_error, max_details=settings.import_max_error_details,
                    delta_max=settings.index_delta_max, log_keep_s=settings.index_log_keep_s,
                )
            )  # fmt: skip
        except InvalidFile as exc:
            # The file as a whole is wrong (or, applying with on_error=abort, a bad row):
            # the page shows the message and the rows, like a dry run's errors.
            return JSONResponse(
                {"error": {"code": exc.code, "message": exc.message, "details": exc.details}},
                422,
            )
        if apply:
            if result["kind"] == "geofences":
                await state.index_holder.wait_for(result["version"])
            else:
                await state.campaign_holder.refresh()
        return JSONResponse(result)

    @router.post("/api/uploads/{upload_id}/check")
    async def check_upload(
        request: Request, upload_id: str, session: ApiCsrf, body: Annotated[RunIn, Body()]
    ) -> Response:
        return await run_upload(request, upload_id, session.id_hash, False, body)

    @router.post("/api/uploads/{upload_id}/apply")
    async def apply_upload(
        request: Request, upload_id: str, session: ApiCsrf, body: Annotated[RunIn, Body()]
    ) -> Response:
        return await run_upload(request, upload_id, session.id_hash, True, body)

    # --- campaigns and reports --------------------------------------------------------

    @router.get("/campaigns")
    async def campaigns_page(
        request: Request, session: PageSession, done: str = "", campaign: str = ""
    ) -> Response:
        engine = _state(request).engine
        today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)

        def load() -> tuple[dict[str, Any], dict[str, int]]:
            listing = campaigns.list_campaigns(engine)
            with engine.connect() as conn:
                return listing, repo.issued_since(conn, today)

        listing, issued = await anyio.to_thread.run_sync(load)
        rows = [_campaign_row(item, issued.get(item["id"], 0)) for item in listing["items"]]
        flash = None
        if done in ("paused", "active") and campaign:
            flash = f"Campaign {campaign} is now {'paused' if done == 'paused' else 'active'}."
        return pages.render(
            "campaigns.html", request, session, nav="campaigns", rows=rows,
            policies=listing["policies"], flash=flash,
        )  # fmt: skip

    @router.post("/campaigns/{campaign_id}/status")
    async def set_status(
        request: Request,
        campaign_id: str,
        session: PageCsrf,
        status: Annotated[str, Form(max_length=16)],
    ) -> Response:
        if status not in ("active", "paused"):
            raise PageError(InvalidInput("status is active or paused", [{"field": "status"}]))
        state = _state(request)
        try:
            await anyio.to_thread.run_sync(campaigns.set_status, state.engine, campaign_id, status)
        except DomainError as exc:
            raise PageError(exc) from None
        await state.campaign_holder.refresh()
        target = f"{PREFIX}/campaigns?done={status}&campaign={quote(campaign_id)}"
        return secure(RedirectResponse(target, 303), settings)

    @router.get("/campaigns/{campaign_id}")
    async def report_page(
        request: Request,
        campaign_id: str,
        session: PageSession,
        attribution_h: Annotated[float, Query(gt=0, le=24 * 90)] = 72.0,
    ) -> Response:
        engine = _state(request).engine
        start = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(
            days=CHART_DAYS - 1
        )

        def load() -> tuple[dict[str, Any], dict[str, Any], dict[str, int], dict[str, int]]:
            campaign = campaigns.get_campaign(engine, campaign_id)
            report = campaign_report(engine, campaign_id, attribution_h)
            with engine.connect() as conn:
                issued, redeemed = repo.daily_counts(conn, campaign_id, start)
            return campaign, report, issued, redeemed

        try:
            campaign, report, issued, redeemed = await anyio.to_thread.run_sync(load)
        except DomainError as exc:
            raise PageError(exc) from None
        days = list(repo.iter_days(start, CHART_DAYS))
        chart = daily_bars(
            days,
            [
                Series("issued", "issued", [issued.get(d, 0) for d in days]),
                Series("redeemed", "redeemed", [redeemed.get(d, 0) for d in days]),
            ],
        )
        return pages.render(
            "report.html", request, session, nav="campaigns",
            row=_campaign_row(campaign, None), report=report, chart=chart,
            totals={"issued": sum(issued.values()), "redeemed": sum(redeemed.values())},
            chart_days=CHART_DAYS,
        )  # fmt: skip

    # --- why no offer? ----------------------------------------------------------------

    @router.get("/why")
    async def why_page(
        request: Request,
        session: PageSession,
        lat: float | None = None,
        lng: float | None = None,
    ) -> Response:
        form = {"device_id": "console-test-device", "user_id": "", "lat": lat, "lng": lng,
                "accuracy_m": 5, "channel": ""}  # fmt: skip
        return pages.render("why.html", request, session, nav="why", form=form, answer=None)

    @router.post("/why")
    async def why_post(
        request: Request,
        session: PageCsrf,
        device_id: Annotated[str, Form()] = "",
        user_id: Annotated[str, Form()] = "",
        lat: Annotated[str, Form()] = "",
        lng: Annotated[str, Form()] = "",
        accuracy_m: Annotated[str, Form()] = "5",
        channel: Annotated[str, Form()] = "",
    ) -> Response:
        form = {"device_id": device_id, "user_id": user_id, "lat": lat, "lng": lng,
                "accuracy_m": accuracy_m, "channel": channel}  # fmt: skip
        try:
            answer = await why.explain_ping(
                _state(request),
                device_id=device_id.strip(),
                user_id=user_id.strip() or None,
                lat=float(lat),
                lng=float(lng),
                accuracy_m=float(accuracy_m or 5),
                channel=channel if channel in ("push", "in_app") else None,  # type: ignore[arg-type]
            )
        except (ValueError, ValidationError) as exc:
            problems = _form_problems(exc)
            return pages.render(
                "why.html", request, session, 422, nav="why", form=form, answer=None,
                problems=problems,
            )  # fmt: skip
        except DomainError as exc:
            return pages.render(
                "why.html", request, session, exc.status_code, nav="why", form=form,
                answer=None, problems=[exc.message],
            )  # fmt: skip
        decisions = [
            {**d, "step": why.explain_reason(str(d.get("reason")))}
            for d in why.in_design_order(answer.get("decisions") or [])
        ]
        names = {c.id: c.name for c in _state(request).campaign_holder.current.campaigns}
        return pages.render(
            "why.html", request, session, nav="why", form=form, answer=answer,
            reason=why.explain_reason(answer["reason"]), decisions=decisions, names=names,
        )  # fmt: skip

    # --- webhooks (on service.webhooks, as the API) ----------------------------------

    def back_to(endpoint_id: str | None, **query: Any) -> Response:
        path = f"{PREFIX}/webhooks" + (f"/{endpoint_id}" if endpoint_id else "")
        return secure(
            RedirectResponse(path + ("?" + urlencode(query) if query else ""), 303), settings
        )

    async def webhooks_list(
        request: Request, session: Any, status: int = 200, *, form: dict[str, Any] | None = None,
        problem: DomainError | None = None, flash: str | None = None,
    ) -> Response:  # fmt: skip
        items = await anyio.to_thread.run_sync(webhooks.endpoints, _state(request).engine)
        return pages.render(
            "webhooks.html", request, session, status, nav="webhooks", items=items,
            event_types=webhooks.EVENT_TYPES, flash=flash, problem=problem,
            invalid=webhooks.invalid_fields(problem) if problem else set(),
            form=form or {"url": "", "scope": "all", "events": [], "store_tags": ""},
        )  # fmt: skip

    async def webhook_detail(
        request: Request, session: Any, endpoint_id: str, status: int = 200, *,
        cursor: int | None = None, flash: str | None = None, problem: DomainError | None = None,
        since: str = "",
    ) -> Response:  # fmt: skip
        try:
            endpoint, deliveries = await anyio.to_thread.run_sync(
                webhooks.endpoint_view, _state(request).engine, endpoint_id, cursor
            )
        except DomainError as exc:
            raise PageError(exc) from None
        return pages.render(
            "webhook.html", request, session, status, nav="webhooks", endpoint=endpoint,
            deliveries=deliveries["deliveries"], next_cursor=deliveries["next_cursor"],
            older=cursor is not None, flash=flash, problem=problem,
            since=since or webhooks.since_default(),
            overlap_h=settings.webhook_secret_overlap_s / 3600,
        )  # fmt: skip

    @router.get("/webhooks")
    async def webhooks_page(
        request: Request,
        session: PageSession,
        done: Annotated[str, Query(max_length=16)] = "",
        endpoint: Annotated[str, Query(max_length=32)] = "",
    ) -> Response:
        return await webhooks_list(request, session, flash=webhooks.list_flash(done, endpoint))

    @router.post("/webhooks")
    async def create_webhook(
        request: Request,
        session: PageCsrf,
        url: Annotated[str, Form()] = "",
        scope: Annotated[str, Form(max_length=8)] = "all",
        events: Annotated[list[str] | None, Form()] = None,
        store_tags: Annotated[str, Form()] = "",
    ) -> Response:
        engine = _state(request).engine
        form = {"url": url, "scope": scope, "events": events or [], "store_tags": store_tags}
        try:
            try:  # the API's request model, and its wording of what is wrong
                body = WebhookCreate.model_validate(
                    webhooks.create_body(url, scope, events or [], store_tags)
                )
            except ValidationError as exc:
                raise invalid_request(exc.errors(), ("body",)) from None
            created = await anyio.to_thread.run_sync(
                lambda: webhook_service.create_endpoint(
                    engine, body.url, body.events, body.store_tags
                )
            )
        except DomainError as exc:
            return await webhooks_list(request, session, exc.status_code, form=form, problem=exc)
        return pages.render(
            "webhook_secret.html", request, session, 201, nav="webhooks", endpoint=created,
            secret=created["secret"], rotated=None,
        )  # fmt: skip

    @router.get("/webhooks/{endpoint_id}")
    async def webhook_page(
        request: Request,
        endpoint_id: EndpointId,
        session: PageSession,
        cursor: Annotated[int | None, Query(ge=0)] = None,
        done: Annotated[str, Query(max_length=16)] = "",
        queued: Annotated[int, Query(ge=0)] = 0,
    ) -> Response:
        flash = webhooks.endpoint_flash(done, queued)
        return await webhook_detail(request, session, endpoint_id, cursor=cursor, flash=flash)

    @router.post("/webhooks/{endpoint_id}/enabled")
    async def set_webhook_enabled(
        request: Request,
        endpoint_id: EndpointId,
        session: PageCsrf,
        enabled: Annotated[str, Form(max_length=8)],
        back: Annotated[str, Form(max_length=8)] = "endpoint",
    ) -> Response:
        if enabled not in ("true", "false"):
            raise PageError(InvalidInput("enabled is true or false", [{"field": "enabled"}]))
        on, engine = enabled == "true", _state(request).engine
        try:
            await anyio.to_thread.run_sync(
                lambda: webhook_service.patch_endpoint(
                    engine, endpoint_id, {"enabled": on}, via="the console"
                )
            )
        except DomainError as exc:
            raise PageError(exc) from None
        done = "enabled" if on else "disabled"
        if back == "list":
            return back_to(None, done=done, endpoint=endpoint_id)
        return back_to(endpoint_id, done=done)

    @router.post("/webhooks/{endpoint_id}/rotate")
    async def rotate_webhook_secret(
        request: Request, endpoint_id: EndpointId, session: PageCsrf
    ) -> Response:
        engine, overlap = _state(request).engine, settings.webhook_secret_overlap_s

        def run() -> tuple[dict[str, Any], dict[str, Any]]:
            rotated = webhook_service.rotate_secret(engine, endpoint_id, overlap)
            return rotated, webhook_service.get_endpoint(engine, endpoint_id)

        try:
            rotated, endpoint = await anyio.to_thread.run_sync(run)
        except DomainError as exc:
            raise PageError(exc) from None
        return pages.render(
            "webhook_secret.html", request, session, nav="webhooks", endpoint=endpoint,
            secret=rotated["secret"], rotated=rotated, overlap_h=overlap / 3600,
        )  # fmt: skip

    @router.get("/webhooks/{endpoint_id}/delete")
    async def confirm_webhook_delete(
        request: Request, endpoint_id: EndpointId, session: PageSession
    ) -> Response:
        try:
            endpoint = await anyio.to_thread.run_sync(
                webhook_service.get_endpoint, _state(request).engine, endpoint_id
            )
        except DomainError as exc:
            raise PageError(exc) from None
        return pages.render(
            "webhook_delete.html", request, session, nav="webhooks", endpoint=endpoint
        )

    @router.post("/webhooks/{endpoint_id}/delete")
    async def delete_webhook(
        request: Request, endpoint_id: EndpointId, session: PageCsrf
    ) -> Response:
        try:
            await anyio.to_thread.run_sync(
                webhook_service.delete_endpoint, _state(request).engine, endpoint_id
            )
        except DomainError as exc:
            raise PageError(exc) from None
        return back_to(None, done="deleted", endpoint=endpoint_id)

    @router.post("/webhooks/{endpoint_id}/replay")
    async def replay_webhook(
        request: Request,
        endpoint_id: EndpointId,
        session: PageCsrf,
        since: Annotated[str, Form(max_length=64)] = "",
    ) -> Response:
        try:
            try:  # the API's type for since=, and its wording of what is wrong
                at = SINCE.validate_python(webhooks.since_text(since))
            except ValidationError as exc:
                raise invalid_request(exc.errors(), ("query", "since")) from None
            done = await anyio.to_thread.run_sync(
                webhook_service.replay, _state(request).engine, endpoint_id, at
            )
        except DomainError as exc:
            if exc.status_code == 404:
                raise PageError(exc) from None
            return await webhook_detail(
                request, session, endpoint_id, exc.status_code, problem=exc, since=since
            )
        return back_to(endpoint_id, done="replayed", queued=done["queued"])

    return router, pages


def _safe_next(path: str) -> str:
    """Only a console path (never another site) after signing in."""
    ok = path.startswith(f"{PREFIX}/") and not path.startswith(f"{PREFIX}/sign-")
    if ok and "//" not in path and "\\" not in path:
        return path
    return f"{PREFIX}/stores"


def _form_problems(exc: Exception) -> list[str]:
    if isinstance(exc, ValidationError):
        return [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
    return ["latitude, longitude and accuracy must be numbers (click the map to fill them)"]


def _campaign_row(item: dict[str, Any], issued_today: int | None) -> dict[str, Any]:
    """What the campaigns table and the report's header show of one campaign."""
    doc = item["campaign"]
    schedule = doc.get("schedule") or {}
    days = schedule.get("days") or []
    hours = schedule.get("hours") or []
    return {
        "id": item["id"],
        "name": item["name"],
        "status": item["status"],
        "title": (doc.get("offer") or {}).get("title", ""),
        "message": (doc.get("offer") or {}).get("message", ""),
        "starts_at": doc.get("starts_at"),
        "ends_at": doc.get("ends_at"),
        "days": "every day" if len(days) in (0, 7) else ", ".join(days),
        "hours": ", ".join(hours) if hours else "all day",
        "trigger": doc.get("trigger") or {},
        "caps": [f"{c['count']} per {duration(c['window'])}" for c in doc.get("caps") or []],
        "budget": doc.get("budget") or {},
        "holdout_pct": doc.get("holdout_pct", 0),
        "rollout_pct": doc.get("rollout_pct", 100),
        "targeting": doc.get("targeting") or {},
        "channel": doc.get("channel", "push"),
        "priority": doc.get("priority", 0),
        "issued_today": issued_today,
    }


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
