"""Geofence use cases: all-or-nothing imports, reads and deletes, each logging its changes."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, BinaryIO, Literal

import orjson
from sqlalchemy import Engine

from geofences.model import FenceRecord
from geofences.parsing import FileError, RowError, iter_fences
from service.errors import InvalidFile, NotFound
from service.fences import changelog
from service.fences import repository as repo
from service.fences.bulk import Staging
from service.timeutil import aware_or_none

log = logging.getLogger("geo_offers.fences")

BATCH = 1000


ImportMode = Literal["upsert", "replace"]
OnError = Literal["abort", "skip"]


@dataclass
class ImportResult:
    mode: str
    dry_run: bool
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    deleted: int = 0
    skipped: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)
    version: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def import_fences(
    engine: Engine,
    stream: BinaryIO,
    filename: str | None,
    *,
    mode: ImportMode = "upsert",
    dry_run: bool = False,
    on_error: OnError = "abort",
    max_details: int = 1000,
    delta_max: int = 10_000,
    log_keep_s: float = 86_400.0,
) -> ImportResult:
    """Stream a CSV/GeoJSON upload into the store of record in one transaction.

    The file is read once. On PostgreSQL a file of more than ``BATCH`` rows streams into a
    staging table with COPY and is merged in SQL (:mod:`service.fences.bulk`); smaller
    files, and every file on SQLite, are written in batches of ``BATCH`` rows.

    With ``on_error=abort`` (default) any bad row raises :class:`InvalidFile` listing every
    bad row (up to ``max_details``) and the transaction is rolled back, so nothing is
    written; ``on_error=skip`` writes the good rows and reports the bad ones.
    ``mode=replace`` also deletes the fences absent from the file — but never those whose
    row was bad, so a typo cannot delete a store.
    ``dry_run`` does everything, reports the counts, and rolls back.

    The new version's change log row goes in the same transaction: the changed store ids,
    or "rebuild" when more than ``delta_max`` fences changed.
    """
    result = ImportResult(mode=mode, dry_run=dry_run)
    n_errors = 0
    seen: set[str] = set()  # the batch path's store ids, for mode=replace
    bad_ids: list[str] = []
    batch: list[FenceRecord] = []
    changed: list[str] | None = []
    staging: Staging | None = None

    def error(item: RowError) -> None:
        nonlocal n_errors
        n_errors += 1
        if len(result.errors) < max_details:
            result.errors.append(item.to_dict())

    def flush() -> None:  # the batch path: BATCH rows at a time
        nonlocal changed
        if not batch or (n_errors and on_error == "abort"):
            batch.clear()
            return
        rows = [repo.record_to_row(r) for r in batch]
        known = repo.existing_hashes(conn, [r["store_id"] for r in rows])
        write = []
        for row in rows:
            old = known.get(row["store_id"])
            if old is None:
                result.created += 1
                write.append(row)
            elif old != row["content_hash"]:
                result.updated += 1
                write.append(row)
            else:
                result.unchanged += 1
        repo.upsert(conn, write)
        if changed is not None:
            changed.extend(row["store_id"] for row in write)
            if len(changed) > delta_max:
                changed = None
        batch.clear()

    with engine.begin() as conn, contextlib.ExitStack() as copying:
        repo.lock_version(conn)
        # PostgreSQL streams a file of more than BATCH rows through a staging table with
        # COPY; smaller ones (single-store edits) take the batch path, a few statements
        # cheaper than creating, indexing and merging a staging table.
        use_copy = conn.dialect.name == "postgresql"
        add: Callable[[FenceRecord], None] = batch.append
        keep: Callable[[str], None] = bad_ids.append
        try:
            for item in iter_fences(stream, filename):
                if isinstance(item, RowError):
                    error(item)
                    if item.store_id:
                        keep(item.store_id)
                        if mode == "replace" and staging is None:
                            seen.add(item.store_id)
                    continue
                if n_errors and on_error == "abort":
                    continue
                if mode == "replace" and staging is None:
                    seen.add(item.record.store_id)
                add(item.record)
                if len(batch) >= BATCH:
                    if use_copy:
                        staging = Staging(conn)
                        add, keep = copying.enter_context(staging.writer())
                        for rec in batch:
                            add(rec)
                        for store_id in bad_ids:
                            keep(store_id)
                        batch.clear()
                        seen.clear()
                    else:
                        flush()
            flush()
            copying.close()  # the staging rows' COPY ends here
        except FileError as exc:
            details = [e.to_dict() for e in exc.errors]
            raise InvalidFile(str(exc), details) from exc
        if n_errors:
            result.skipped = n_errors
        if n_errors and on_error == "abort":
            more = f" (first {len(result.errors)} listed)" if n_errors > len(result.errors) else ""
            raise InvalidFile(
                f"{n_errors} bad row(s){more}; nothing was written "
                "(fix them, or import with on_error=skip to write the good rows)",
                result.errors,
            )
        if staging is not None:
            result.created, result.updated, result.unchanged = staging.counts()
            changed = None
            if result.created + result.updated <= delta_max:
                changed = staging.changed_ids()
        if mode == "replace" and result.created + result.updated + result.unchanged == 0:
            raise InvalidFile(
                "mode=replace with a file of no valid fences would delete every fence; "
                "nothing was written"
            )
        if staging is not None and not dry_run:
            staging.merge(result.created, result.updated)
        if mode == "replace":
            gone = staging.delete_missing() if staging else repo.delete_missing(conn, seen)
            result.deleted = len(gone)
            if changed is not None:
                changed.extend(gone)
        if changed is not None and len(changed) > delta_max:
            changed = None
        if dry_run:
            result.version = repo.current_version(conn)
            conn.rollback()
        elif result.created + result.updated + result.deleted:
            result.version = repo.bump_version(conn)
            changelog.record(conn, result.version, changed)
            changelog.prune(conn, log_keep_s)
        else:
            result.version = repo.current_version(conn)
    # Counts go under one key: names such as "created" are LogRecord attributes.
    counts = {k: v for k, v in result.to_dict().items() if k != "errors"}
    log.info("geofence import", extra={"event": "import", "import": counts})
    return result


def fence_public(row: Any, distance_m: float | None = None) -> dict[str, Any]:
    out = {
        "store_id": row.store_id,
        "name": row.name,
        "kind": row.kind,
        "lat": row.lat,
        "lng": row.lng,
        "radius_m": row.radius_m,
        "geometry": orjson.loads(row.geometry_json) if row.geometry_json else None,
        "tags": list(row.tags or ()),
        "timezone": row.timezone,
        "address": row.address,
        "extra": row.extra or {},
        "created_at": aware_or_none(row.created_at),
        "updated_at": aware_or_none(row.updated_at),
    }
    if distance_m is not None:
        out["distance_m"] = round(distance_m, 3)
    return out


def get_fence(engine: Engine, store_id: str) -> dict[str, Any]:
    with engine.connect() as conn:
        row = repo.get(conn, store_id)
    if row is None:
        raise NotFound(f"no geofence with store_id {store_id!r}")
    return fence_public(row)


def list_fences(
    engine: Engine, *, limit: int, cursor: str | None, tag: str | None, near: repo.Near | None
) -> dict[str, Any]:
    with engine.connect() as conn:
        page = repo.list_page(conn, limit=limit, after=cursor, tag=tag, near=near)
    items = [fence_public(row, d) for row, d in page]
    next_cursor = items[-1]["store_id"] if near is None and len(items) == limit else None
    return {"items": items, "next_cursor": next_cursor}


def delete_fence(engine: Engine, store_id: str, log_keep_s: float = 86_400.0) -> int:
    with engine.begin() as conn:
        repo.lock_version(conn)
        if not repo.delete_one(conn, store_id):
            raise NotFound(f"no geofence with store_id {store_id!r}")
        version = repo.bump_version(conn)
        changelog.record(conn, version, [store_id])
        changelog.prune(conn, log_keep_s)
        return version
