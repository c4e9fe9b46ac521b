"""Campaign use cases: validated imports, reads, pause/resume, and the replica's live set."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from typing import Any

import anyio.to_thread
import orjson
from sqlalchemy import Engine

from service.campaigns import repository as repo
from service.campaigns.live import CampaignSet
from service.campaigns.spec import (
    Policies,
    SpecError,
    campaign_from_doc,
    campaign_to_doc,
    parse_campaign_file,
)
from service.db import versions
from service.errors import InvalidFile, NotFound
from service.timeutil import aware_or_none

log = logging.getLogger("geo_offers.campaigns")


def _hash(doc: dict[str, Any]) -> str:
    return hashlib.md5(
        orjson.dumps(doc, option=orjson.OPT_SORT_KEYS), usedforsecurity=False
    ).hexdigest()


def _policies_doc(p: Policies) -> dict[str, Any]:
    return p.model_dump(mode="json")


def import_campaigns(
    engine: Engine, data: bytes, filename: str | None, *, dry_run: bool = False
) -> dict[str, Any]:
    """Validate the whole file, then upsert its campaigns (and policies) in one transaction."""
    try:
        parsed = parse_campaign_file(data, filename)
    except SpecError as exc:
        raise InvalidFile(f"{exc}; nothing was written", exc.details) from exc
    rows: list[dict[str, Any]] = []
    for c in parsed.campaigns:
        doc = campaign_to_doc(c)
        rows.append(
            {"id": c.id, "name": c.name, "status": c.status, "doc": doc, "content_hash": _hash(doc)}
        )
    counts = {"created": 0, "updated": 0, "unchanged": 0}
    with engine.begin() as conn:
        versions.lock(conn, versions.CAMPAIGNS)
        known = repo.hashes(conn)
        write = []
        for row in rows:
            old = known.get(row["id"])
            key = (
                "created"
                if old is None
                else "updated"
                if old != row["content_hash"]
                else "unchanged"
            )
            counts[key] += 1
            if key != "unchanged":
                write.append(row)
        repo.upsert(conn, write)
        policies_changed = repo.set_policies(conn, _policies_doc(parsed.policies))
        changed = bool(write) or policies_changed
        if dry_run:
            version = versions.current(conn, versions.CAMPAIGNS)
            conn.rollback()
        else:
            version = (
                versions.bump(conn, versions.CAMPAIGNS)
                if changed
                else versions.current(conn, versions.CAMPAIGNS)
            )
    return {**counts, "policies_changed": policies_changed, "dry_run": dry_run, "version": version}


def _public(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "name": row.name,
        "status": row.status,
        "campaign": row.doc,
        "created_at": aware_or_none(row.created_at),
        "updated_at": aware_or_none(row.updated_at),
    }


def list_campaigns(engine: Engine) -> dict[str, Any]:
    with engine.connect() as conn:
        rows = repo.list_all(conn)
        policies = repo.get_policies(conn)
    return {"items": [_public(r) for r in rows], "policies": policies}


def get_campaign(engine: Engine, campaign_id: str) -> dict[str, Any]:
    with engine.connect() as conn:
        row = repo.get(conn, campaign_id)
    if row is None:
        raise NotFound(f"no campaign {campaign_id!r}")
    return _public(row)


def set_status(engine: Engine, campaign_id: str, status: str) -> dict[str, Any]:
    with engine.begin() as conn:
        versions.lock(conn, versions.CAMPAIGNS)
        row = repo.get(conn, campaign_id)
        if row is None:
            raise NotFound(f"no campaign {campaign_id!r}")
        if row.status != status:
            doc = dict(row.doc)
            doc["status"] = status
            repo.set_status(conn, campaign_id, status, doc)
            versions.bump(conn, versions.CAMPAIGNS)
        row = repo.get(conn, campaign_id)
    return _public(row)


class CampaignHolder:
    """The replica's campaigns and policies, reloaded when their version changes."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self.current = CampaignSet(version=-1)
        self._lock = asyncio.Lock()

    def _load(self) -> CampaignSet:
        with self._engine.connect() as conn:
            version = versions.current(conn, versions.CAMPAIGNS)
            rows = repo.list_all(conn)
            pdoc = repo.get_policies(conn)
        campaigns = tuple(campaign_from_doc(r.doc) for r in rows)
        policies = Policies.model_validate(pdoc) if pdoc else Policies()
        return CampaignSet.build(version, campaigns, policies)

    def _stored_version(self) -> int:
        with self._engine.connect() as conn:
            return versions.current(conn, versions.CAMPAIGNS)

    async def refresh(self, force: bool = False) -> bool:
        async with self._lock:
            if (
                not force
                and await anyio.to_thread.run_sync(self._stored_version) == self.current.version
            ):
                return False
            self.current = await anyio.to_thread.run_sync(self._load)
            return True
