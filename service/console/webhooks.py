"""What the console's Webhooks pages show, and their forms as the ``/v1/webhooks`` API's
requests (issue 14, DESIGN §10). The routes are in :mod:`service.console.router`; the work
is done by :mod:`service.webhooks.service`, the functions the API calls.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine

from service.errors import DomainError
from service.events.types import EventType
from service.webhooks import service

EVENT_TYPES = [t.value for t in EventType]
DELIVERIES_PAGE = 50
#: What ``<input type="datetime-local">`` sends: no offset (the form says it is UTC).
_LOCAL_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d(:\d\d(\.\d+)?)?")


def create_body(url: str, scope: str, events: list[str], store_tags: str) -> dict[str, Any]:
    """The add form as the API's request body: ``events`` absent for every type, the tags
    typed with commas as a list (none typed: absent, every store).

    >>> create_body("https://x.example", "some", ["offer.redeemed"], " nyc, downtown ,")
    {'url': 'https://x.example', 'store_tags': ['nyc', 'downtown'], 'events': ['offer.redeemed']}
    >>> create_body("https://x.example", "all", ["offer.redeemed"], "")
    {'url': 'https://x.example', 'store_tags': None}
    """
    tags = [t.strip() for t in re.split(r"[,\n]", store_tags) if t.strip()]
    body: dict[str, Any] = {"url": url, "store_tags": tags or None}
    if scope != "all":
        body["events"] = events
    return body


def since_text(text: str) -> str:
    """The replay form's time as RFC 3339: the date picker's value is read as UTC.

    >>> since_text("2026-11-30T09:15"), since_text("2026-11-30T09:15:00+01:00")
    ('2026-11-30T09:15Z', '2026-11-30T09:15:00+01:00')
    """
    value = text.strip()
    return value + "Z" if _LOCAL_TIME.fullmatch(value) else value


def since_default(now: datetime | None = None) -> str:
    """The replay form's starting value: an hour ago, UTC, as the date picker shows it."""
    return ((now or datetime.now(UTC)) - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S")


def invalid_fields(exc: DomainError) -> set[str]:
    """The form fields an error names (``body.events.0`` → ``events``), to mark them.

    >>> from service.errors import InvalidInput
    >>> sorted(invalid_fields(InvalidInput("x", [{"field": "body.events.0"}, {"field": "url"}])))
    ['events', 'url']
    """
    names = set()
    for d in exc.details:
        parts = [p for p in str(d.get("field", "")).split(".") if p not in ("body", "query")]
        if parts:
            names.add(parts[0])
    return names


def list_flash(done: str, endpoint_id: str) -> str | None:
    if done in ("deleted", "enabled", "disabled") and endpoint_id:
        return f"Endpoint {endpoint_id} is {done}."
    return None


def endpoint_flash(done: str, queued: int) -> str | None:
    if done == "replayed":
        what = "delivery" if queued == 1 else "deliveries"
        return f"{queued:,} {what} queued again, under the events' own ids."
    return {
        "enabled": "Deliveries resume: the endpoint is enabled.",
        "disabled": "The endpoint is disabled: no new deliveries until it is enabled.",
    }.get(done)


def endpoints(engine: Engine) -> list[dict[str, Any]]:
    """Every endpoint as the API lists it, with its newest attempted delivery."""
    return service.list_endpoints(engine, last_attempt=True)


def endpoint_view(
    engine: Engine, endpoint_id: str, cursor: int | None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """One endpoint and a page of its deliveries (newest first, before ``cursor``)."""
    endpoint = service.get_endpoint(engine, endpoint_id)
    return endpoint, service.list_deliveries(engine, endpoint_id, DELIVERIES_PAGE, cursor, None)
