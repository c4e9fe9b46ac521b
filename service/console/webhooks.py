"""The console's Webhooks pages (issue 14, DESIGN §10): endpoints, their secrets (shown once),
deliveries and replays, on the service functions the ``/v1/webhooks`` API calls.

Forms are validated by the API's own request model and service, and their errors worded by
the API's error mapping, so the console and the API say the same thing about the same input.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any
from urllib.parse import urlencode

import anyio.to_thread
from fastapi import APIRouter, Form, Path, Query, Request
from fastapi.responses import RedirectResponse, Response
from pydantic import AwareDatetime, TypeAdapter, ValidationError

from service.console.web import PREFIX, PageCsrf, PageError, Pages, PageSession, secure
from service.errors import DomainError, InvalidInput
from service.events.types import EventType
from service.http.errors import invalid_request
from service.settings import Settings
from service.webhooks import service
from service.webhooks.router import WebhookCreate

EndpointId = Annotated[str, Path(min_length=1, max_length=32)]
DELIVERIES_PAGE = 50
EVENT_TYPES = [t.value for t in EventType]
#: What ``<input type="datetime-local">`` sends: no offset (the form says it is UTC).
_LOCAL_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d(:\d\d(\.\d+)?)?")
_SINCE = TypeAdapter(AwareDatetime)


def _tags(text: str) -> list[str] | None:
    """``"nyc, downtown"`` → ``["nyc", "downtown"]``; nothing typed → every store."""
    tags = [t.strip() for t in re.split(r"[,\n]", text) if t.strip()]
    return tags or None


def _create_body(url: str, scope: str, events: list[str], store_tags: str) -> WebhookCreate:
    """The form as the API's request body (``events`` absent: every type), validated by it."""
    body: dict[str, Any] = {"url": url, "store_tags": _tags(store_tags)}
    if scope != "all":
        body["events"] = events
    try:
        return WebhookCreate.model_validate(body)
    except ValidationError as exc:
        raise invalid_request(exc.errors(), ("body",)) from None


def _since(text: str) -> Any:
    """The replay form's time: RFC 3339, or the date picker's value read as UTC."""
    value = text.strip()
    if _LOCAL_TIME.fullmatch(value):
        value += "Z"
    try:
        return _SINCE.validate_python(value)
    except ValidationError as exc:
        raise invalid_request(exc.errors(), ("query", "since")) from None


def _fields(exc: DomainError) -> set[str]:
    """The form fields an error names (``body.events.0`` → ``events``), to mark them."""
    names = set()
    for d in exc.details:
        parts = [p for p in str(d.get("field", "")).split(".") if p not in ("body", "query")]
        if parts:
            names.add(parts[0])
    return names


def add_routes(router: APIRouter, pages: Pages, settings: Settings) -> None:
    """The Webhooks pages, on the console's router (sessions and CSRF as everywhere)."""

    def engine(request: Request) -> Any:
        return request.app.state.engine

    def back_to(endpoint_id: str | None, **query: Any) -> Response:
        path = f"{PREFIX}/webhooks" + (f"/{endpoint_id}" if endpoint_id else "")
        target = path + ("?" + urlencode(query) if query else "")
        return secure(RedirectResponse(target, 303), settings)

    async def list_page(
        request: Request, session: Any, status: int = 200, *, form: dict[str, Any] | None = None,
        problem: DomainError | None = None, flash: str | None = None,
    ) -> Response:  # fmt: skip
        items = await anyio.to_thread.run_sync(
            lambda: service.list_endpoints(engine(request), last_attempt=True)
        )
        return pages.render(
            "webhooks.html", request, session, status, nav="webhooks", items=items,
            event_types=EVENT_TYPES, flash=flash, problem=problem,
            invalid=_fields(problem) if problem else set(),
            form=form or {"url": "", "scope": "all", "events": [], "store_tags": ""},
        )  # fmt: skip

    async def endpoint_page(
        request: Request, session: Any, endpoint_id: str, status: int = 200, *,
        cursor: int | None = None, flash: str | None = None, problem: DomainError | None = None,
        since: str = "",
    ) -> Response:  # fmt: skip
        def load() -> tuple[dict[str, Any], dict[str, Any]]:
            found = service.get_endpoint(engine(request), endpoint_id)
            deliveries = service.list_deliveries(
                engine(request), endpoint_id, DELIVERIES_PAGE, cursor, None
            )
            return found, deliveries

        try:
            endpoint, deliveries = await anyio.to_thread.run_sync(load)
        except DomainError as exc:
            raise PageError(exc) from None
        return pages.render(
            "webhook.html", request, session, status, nav="webhooks", endpoint=endpoint,
            deliveries=deliveries["deliveries"], next_cursor=deliveries["next_cursor"],
            older=cursor is not None, flash=flash, problem=problem, since=since,
            since_default=(datetime.now(UTC) - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S"),
            overlap_h=settings.webhook_secret_overlap_s / 3600,
        )  # fmt: skip

    @router.get("/webhooks")
    async def webhooks_page(
        request: Request,
        session: PageSession,
        done: Annotated[str, Query(max_length=16)] = "",
        endpoint: Annotated[str, Query(max_length=32)] = "",
    ) -> Response:
        flash = None
        if done in ("deleted", "enabled", "disabled") and endpoint:
            flash = f"Endpoint {endpoint} is {done}."
        return await list_page(request, session, flash=flash)

    @router.post("/webhooks")
    async def create_webhook(
        request: Request,
        session: PageCsrf,
        url: Annotated[str, Form()] = "",
        scope: Annotated[str, Form(max_length=8)] = "all",
        events: Annotated[list[str] | None, Form()] = None,
        store_tags: Annotated[str, Form()] = "",
    ) -> Response:
        events = events or []
        form = {"url": url, "scope": scope, "events": events, "store_tags": store_tags}
        try:
            body = _create_body(url, scope, events, store_tags)
            created = await anyio.to_thread.run_sync(
                lambda: service.create_endpoint(
                    engine(request), body.url, body.events, body.store_tags
                )
            )
        except DomainError as exc:
            return await list_page(request, session, exc.status_code, form=form, problem=exc)
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
        flash = {
            "enabled": "Deliveries resume: the endpoint is enabled.",
            "disabled": "The endpoint is disabled: no new deliveries until it is enabled.",
            "replayed": f"{queued:,} {'delivery' if queued == 1 else 'deliveries'} queued again, "
            "under the events' own ids.",
        }.get(done)
        return await endpoint_page(request, session, endpoint_id, cursor=cursor, flash=flash)

    @router.post("/webhooks/{endpoint_id}/enabled")
    async def set_enabled(
        request: Request,
        endpoint_id: EndpointId,
        session: PageCsrf,
        enabled: Annotated[str, Form(max_length=8)],
        back: Annotated[str, Form(max_length=8)] = "endpoint",
    ) -> Response:
        if enabled not in ("true", "false"):
            raise PageError(InvalidInput("enabled is true or false", [{"field": "enabled"}]))
        on = enabled == "true"
        try:
            await anyio.to_thread.run_sync(
                lambda: service.patch_endpoint(
                    engine(request), endpoint_id, {"enabled": on}, via="the console"
                )
            )
        except DomainError as exc:
            raise PageError(exc) from None
        if back == "list":
            return back_to(None, done="enabled" if on else "disabled", endpoint=endpoint_id)
        return back_to(endpoint_id, done="enabled" if on else "disabled")

    @router.post("/webhooks/{endpoint_id}/rotate")
    async def rotate(request: Request, endpoint_id: EndpointId, session: PageCsrf) -> Response:
        overlap = settings.webhook_secret_overlap_s

        def run() -> tuple[dict[str, Any], dict[str, Any]]:
            rotated = service.rotate_secret(engine(request), endpoint_id, overlap)
            return rotated, service.get_endpoint(engine(request), endpoint_id)

        try:
            rotated, endpoint = await anyio.to_thread.run_sync(run)
        except DomainError as exc:
            raise PageError(exc) from None
        return pages.render(
            "webhook_secret.html", request, session, nav="webhooks", endpoint=endpoint,
            secret=rotated["secret"], rotated=rotated, overlap_h=overlap / 3600,
        )  # fmt: skip

    @router.get("/webhooks/{endpoint_id}/delete")
    async def confirm_delete(
        request: Request, endpoint_id: EndpointId, session: PageSession
    ) -> Response:
        try:
            endpoint = await anyio.to_thread.run_sync(
                service.get_endpoint, engine(request), endpoint_id
            )
        except DomainError as exc:
            raise PageError(exc) from None
        return pages.render(
            "webhook_delete.html", request, session, nav="webhooks", endpoint=endpoint
        )

    @router.post("/webhooks/{endpoint_id}/delete")
    async def delete(request: Request, endpoint_id: EndpointId, session: PageCsrf) -> Response:
        try:
            await anyio.to_thread.run_sync(service.delete_endpoint, engine(request), endpoint_id)
        except DomainError as exc:
            raise PageError(exc) from None
        return back_to(None, done="deleted", endpoint=endpoint_id)

    @router.post("/webhooks/{endpoint_id}/replay")
    async def replay(
        request: Request,
        endpoint_id: EndpointId,
        session: PageCsrf,
        since: Annotated[str, Form(max_length=64)] = "",
    ) -> Response:
        try:
            at = _since(since)
            done = await anyio.to_thread.run_sync(service.replay, engine(request), endpoint_id, at)
        except DomainError as exc:
            if exc.status_code == 404:
                raise PageError(exc) from None
            return await endpoint_page(
                request, session, endpoint_id, exc.status_code, problem=exc, since=since
            )
        return back_to(endpoint_id, done="replayed", queued=done["queued"])
