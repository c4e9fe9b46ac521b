"""Webhook endpoints (create, change, rotate, replay) and what an attempt's result does.

Routers call these with an engine; every write is one transaction. Errors are the domain
errors of :mod:`service.errors` (404 unknown endpoint, 422 bad field).
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import Connection, Engine, update

from service.errors import InvalidInput, NotFound
from service.events.types import EventType
from service.timeutil import aware, aware_or_none, iso_z
from service.webhooks import repository as repo
from service.webhooks.policy import Outcome, RetryPolicy
from service.webhooks.signing import new_secret

MAX_URL = 2048


def _now() -> datetime:
    return datetime.now(UTC)


def check_url(url: str, field: str = "url") -> str:
    """An absolute http(s) URL with a host; anything else is a 422 naming ``field``."""
    url = url.strip()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or len(url) > MAX_URL:
        raise InvalidInput(
            f"{field} must be an absolute http:// or https:// URL (at most {MAX_URL} characters)",
            [{"field": field, "reason": "not an http(s) URL"}],
        )
    if parts.username or parts.password:
        raise InvalidInput(
            f"{field} must not carry credentials: receivers verify the signature instead",
            [{"field": field, "reason": "credentials in URL"}],
        )
    return url


def _types(values: list[EventType] | None, field: str = "events") -> list[str] | None:
    if values is None:
        return None
    if not values:
        raise InvalidInput(
            f"{field} is empty: omit it (or send null) for every event type",
            [{"field": field, "reason": "empty list"}],
        )
    return sorted({EventType(v).value for v in values})


def _tags(values: list[str] | None, field: str = "store_tags") -> list[str] | None:
    if values is None:
        return None
    if not values:
        raise InvalidInput(
            f"{field} is empty: omit it (or send null) for every store",
            [{"field": field, "reason": "empty list"}],
        )
    return sorted(set(values))


def public(row: Any, backlog: tuple[int, datetime] | None = None) -> dict[str, Any]:
    """An endpoint as the API shows it (never its secrets)."""
    pending, oldest = backlog if backlog is not None else (0, None)
    return {
        "id": row.id,
        "url": row.url,
        "events": row.event_types,
        "store_tags": row.store_tags,
        "enabled": bool(row.enabled),
        "disabled_reason": row.disabled_reason,
        "disabled_at": _iso(row.disabled_at),
        "failing_since": _iso(row.failing_since),
        "previous_secret_expires_at": _iso(row.previous_secret_expires_at),
        "created_at": _iso(row.created_at),
        "updated_at": _iso(row.updated_at),
        "pending": pending,
        "oldest_pending_recorded_at": _iso(oldest),
    }


def _iso(value: datetime | None) -> str | None:
    return None if value is None else iso_z(value)


def create_endpoint(
    engine: Engine,
    url: str,
    events: list[EventType] | None,
    store_tags: list[str] | None,
) -> dict[str, Any]:
    """A new enabled endpoint; the answer carries its secret, the only time it is shown."""
    now = _now()
    endpoint_id = "wh_" + secrets.token_hex(12)
    secret = new_secret()
    row: dict[str, Any] = {
        "id": endpoint_id,
        "url": check_url(url),
        "event_types": _types(events),
        "store_tags": _tags(store_tags),
        "secret": secret,
        "enabled": True,
        "created_at": now,
        "updated_at": now,
    }
    with engine.begin() as conn:
        repo.insert_endpoint(conn, row)
        created = repo.get_endpoint(conn, endpoint_id)
    return {**public(created), "secret": secret}


def _get(conn: Connection, endpoint_id: str, lock: bool = False) -> Any:
    row = repo.get_endpoint(conn, endpoint_id, lock=lock)
    if row is None:
        raise NotFound(f"no webhook endpoint {endpoint_id!r}")
    return row


def get_endpoint(engine: Engine, endpoint_id: str) -> dict[str, Any]:
    with engine.connect() as conn:
        row = _get(conn, endpoint_id)
        return public(row, repo.backlog(conn, endpoint_id).get(endpoint_id))


def list_endpoints(engine: Engine, *, last_attempt: bool = False) -> list[dict[str, Any]]:
    """Every endpoint as :func:`public` shows it; with ``last_attempt``, each also has the
    newest attempted delivery under ``last_attempt`` (None before the first attempt)."""
    with engine.connect() as conn:
        backlog = repo.backlog(conn)
        items = []
        for r in repo.list_endpoints(conn):
            item = public(r, backlog.get(r.id))
            if last_attempt:
                item["last_attempt"] = _attempt(repo.last_attempted(conn, r.id))
            items.append(item)
        return items


def _attempt(row: Any) -> dict[str, Any] | None:
    if row is None:
        return None
    return {
        "event_id": row.event_id,
        "status": row.status,
        "attempts": row.attempts,
        "at": _iso(row.last_attempt_at),
        "status_code": row.last_status_code,
        "error": row.last_error,
    }


def patch_endpoint(
    engine: Engine, endpoint_id: str, changes: dict[str, Any], *, via: str = "the API"
) -> dict[str, Any]:
    """Apply the fields present in ``changes`` (``url``, ``events``, ``store_tags``,
    ``enabled``); ``events`` / ``store_tags`` set to None mean "all". Enabling an endpoint
    clears why it was disabled, and its pending deliveries resume; disabling it by hand
    records ``disabled through {via}`` (the API, the console) as the reason."""
    values: dict[str, Any] = {}
    if "url" in changes:
        if changes["url"] is None:
            raise InvalidInput("url cannot be null", [{"field": "url", "reason": "null"}])
        values["url"] = check_url(changes["url"])
    if "events" in changes:
        values["event_types"] = _types(changes["events"])
    if "store_tags" in changes:
        values["store_tags"] = _tags(changes["store_tags"])
    if "enabled" in changes:
        if changes["enabled"] is None:
            raise InvalidInput("enabled cannot be null", [{"field": "enabled", "reason": "null"}])
        values["enabled"] = bool(changes["enabled"])
        if values["enabled"]:
            values.update(disabled_reason=None, disabled_at=None, failing_since=None)
        else:
            values.update(disabled_reason=f"disabled through {via}", disabled_at=_now())
    with engine.begin() as conn:
        current = _get(conn, endpoint_id, lock=True)
        if values.get("enabled") is False and not current.enabled:
            values.pop("disabled_reason")  # keep the first reason (410, 5 days failing)
            values.pop("disabled_at")
        if values:
            values["updated_at"] = _now()
            repo.update_endpoint(conn, endpoint_id, values)
        row = _get(conn, endpoint_id)
        return public(row, repo.backlog(conn, endpoint_id).get(endpoint_id))


def delete_endpoint(engine: Engine, endpoint_id: str) -> None:
    with engine.begin() as conn:
        if not repo.delete_endpoint(conn, endpoint_id):
            raise NotFound(f"no webhook endpoint {endpoint_id!r}")


def rotate_secret(engine: Engine, endpoint_id: str, overlap_s: float) -> dict[str, Any]:
    """A new secret (shown in this answer only); the old one also signs for ``overlap_s``."""
    now = _now()
    secret = new_secret()
    with engine.begin() as conn:
        current = _get(conn, endpoint_id, lock=True)
        until = now + timedelta(seconds=overlap_s)
        repo.update_endpoint(
            conn,
            endpoint_id,
            {
                "secret": secret,
                "previous_secret": current.secret if overlap_s > 0 else None,
                "previous_secret_expires_at": until if overlap_s > 0 else None,
                "updated_at": now,
            },
        )
    return {
        "id": endpoint_id,
        "secret": secret,
        "previous_secret_expires_at": iso_z(until) if overlap_s > 0 else None,
    }


def replay(engine: Engine, endpoint_id: str, since: datetime) -> dict[str, Any]:
    """Deliver again every event recorded since ``since`` that the endpoint subscribes to."""
    with engine.begin() as conn:
        row = _get(conn, endpoint_id)
        sub = repo.Subscription(
            row.id,
            None if row.event_types is None else frozenset(row.event_types),
            None if row.store_tags is None else frozenset(row.store_tags),
        )
        queued = repo.replay(conn, sub, aware(since), _now())
    return {"id": endpoint_id, "since": iso_z(since), "queued": queued}


def list_deliveries(
    engine: Engine, endpoint_id: str, limit: int, cursor: int | None, status: str | None
) -> dict[str, Any]:
    with engine.connect() as conn:
        _get(conn, endpoint_id)
        rows = repo.list_deliveries(conn, endpoint_id, limit=limit, before_id=cursor, status=status)
    items = [
        {
            "id": r.id,
            "event_id": r.event_id,
            "event_type": r.event_type,
            "status": r.status,
            "attempts": r.attempts,
            "replay": bool(r.replay),
            "created_at": _iso(r.created_at),
            "next_attempt_at": _iso(r.next_attempt_at) if r.status == "pending" else None,
            "last_attempt_at": _iso(r.last_attempt_at),
            "last_status_code": r.last_status_code,
            "last_error": r.last_error,
            "delivered_at": _iso(r.delivered_at),
        }
        for r in rows
    ]
    next_cursor = str(rows[-1].id) if len(rows) == limit else None
    return {"deliveries": items, "next_cursor": next_cursor}


# -- attempts ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EndpointConfig:
    """What a delivery worker needs of an endpoint (reloaded every poll)."""

    id: str
    url: str
    secrets: tuple[str, ...]  # the current secret first

    @classmethod
    def from_row(cls, row: Any, now: datetime) -> EndpointConfig:
        keys = [row.secret]
        until = aware_or_none(row.previous_secret_expires_at)
        if row.previous_secret and until is not None and until > now:
            keys.append(row.previous_secret)
        return cls(row.id, row.url, tuple(keys))


def endpoint_configs(engine: Engine) -> list[EndpointConfig]:
    now = _now()
    with engine.connect() as conn:
        return [EndpointConfig.from_row(r, now) for r in repo.enabled_endpoints(conn)]


@dataclass(frozen=True, slots=True)
class AttemptSettings:
    policy: RetryPolicy
    disable_after_s: float


def record_attempt(
    engine: Engine,
    endpoint_id: str,
    claimed: repo.Claimed,
    outcome: Outcome,
    settings: AttemptSettings,
    now: datetime | None = None,
) -> str:
    """Store what an attempt did and what follows; returns ``delivered``, ``retried``,
    ``failed`` (given up, or 410), ``dropped`` (the event is missing) or ``superseded``
    (another worker took the delivery after this one's lease ran out)."""
    return record_attempts(engine, endpoint_id, [(claimed, outcome)], settings, now)[0]


def _next(
    claimed: repo.Claimed, outcome: Outcome, settings: AttemptSettings, now: datetime
) -> tuple[str, dict[str, Any]]:
    values: dict[str, Any] = {
        "last_status_code": outcome.status_code,
        "last_error": (outcome.error or "")[:500] or None,
        "lease_token": None,
    }
    if claimed.envelope is None:
        values.update(status="failed", last_error="the event is no longer in the log")
        return "dropped", values
    if outcome.kind == "delivered":
        values.update(status="delivered", delivered_at=now, last_error=None)
        return "delivered", values
    if outcome.kind == "gone" or (
        (now - claimed.created_at).total_seconds() >= settings.policy.retry_for_s
    ):
        values.update(status="failed")
        return "failed", values
    wait = settings.policy.next_attempt_s(outcome, claimed.attempt)
    values.update(next_attempt_at=now + timedelta(seconds=wait))
    return "retried", values


def record_attempts(
    engine: Engine,
    endpoint_id: str,
    attempts: Sequence[tuple[repo.Claimed, Outcome]],
    settings: AttemptSettings,
    now: datetime | None = None,
) -> list[str]:
    """:func:`record_attempt` for several attempts of one endpoint in one transaction (a
    worker stores the outcomes that finished together at once). The endpoint's state
    follows the batch: a 410 disables it; else any success ends its failing streak; else a
    failure starts one, or disables the endpoint once it has lasted ``disable_after_s``."""
    now = now or _now()
    results: list[str] = []
    with engine.begin() as conn:
        for claimed, outcome in attempts:
            result, values = _next(claimed, outcome, settings, now)
            results.append(result if repo.finish_delivery(conn, claimed, values) else "superseded")
        stored = [(r, o) for r, (_, o) in zip(results, attempts, strict=True) if r != "superseded"]
        ep = repo.ENDPOINTS
        gone = [o for _, o in stored if o.kind == "gone"]
        if gone:
            _disable(conn, endpoint_id, gone[0].error or "410 Gone", now)
        elif any(r == "delivered" for r, _ in stored):
            conn.execute(
                update(ep)
                .where(ep.c.id == endpoint_id, ep.c.failing_since.is_not(None))
                .values(failing_since=None)
            )
        elif any(r in ("retried", "failed") for r, _ in stored):
            conn.execute(
                update(ep)
                .where(ep.c.id == endpoint_id, ep.c.failing_since.is_(None))
                .values(failing_since=now)
            )
            row = repo.get_endpoint(conn, endpoint_id)
            since = aware_or_none(row.failing_since) if row is not None else None
            if since is not None and (now - since).total_seconds() >= settings.disable_after_s:
                days = settings.disable_after_s / 86_400
                _disable(conn, endpoint_id, f"every attempt failed for {days:g} days", now)
    return results


def _disable(conn: Connection, endpoint_id: str, reason: str, now: datetime) -> None:
    ep = repo.ENDPOINTS
    conn.execute(
        update(ep)
        .where(ep.c.id == endpoint_id, ep.c.enabled)
        .values(enabled=False, disabled_reason=reason, disabled_at=now, updated_at=now)
    )
