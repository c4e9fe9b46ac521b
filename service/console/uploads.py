"""Files dropped in the console: staged in chunks, checked (a dry run), then applied.

The browser sends a file in chunks smaller than the request body limit, so a file of any
size up to ``max_upload_bytes`` gets through, with a progress bar, to whichever replica
answers; chunks are kept in the database (``console_upload_chunks``) until the file is
applied or a day has passed. Checking and applying call the very functions the HTTP API
calls (:func:`service.fences.service.import_fences`,
:func:`service.campaigns.service.import_campaigns`) on the reassembled file.
"""

from __future__ import annotations

import io
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, BinaryIO, Literal

from sqlalchemy import Engine

from service.campaigns.service import import_campaigns
from service.console import repository as repo
from service.db.engine import read_only
from service.errors import InvalidInput, NotFound
from service.fences.service import import_fences

Kind = Literal["geofences", "campaigns"]
KINDS: tuple[Kind, ...] = ("geofences", "campaigns")
CAMPAIGN_FILE_MAX = 16 * 1024 * 1024  # campaign files are read whole (import_campaigns)
KEEP_UPLOADS = timedelta(days=1)

# Bytes read by a running check or apply, per upload: (session hash, bytes, size), in this
# process; the database's copy serves the other replicas on PostgreSQL. Read without the
# database: on SQLite the running import holds the one write lock every transaction takes.
_progress: dict[str, tuple[str, int, int]] = {}
_progress_lock = threading.Lock()


def create(
    engine: Engine, session_hash: str, kind: str, filename: str, size: int, max_bytes: int
) -> dict[str, Any]:
    if kind not in KINDS:
        raise InvalidInput(
            "choose what the file holds: geofences or campaigns",
            [{"field": "kind", "reason": f"{kind!r} is neither geofences nor campaigns"}],
        )
    limit = CAMPAIGN_FILE_MAX if kind == "campaigns" else max_bytes
    if not 0 < size <= limit:
        reason = "the file is empty" if size <= 0 else f"larger than {limit:,} bytes"
        raise InvalidInput(f"{filename}: {reason}", [{"field": "file", "reason": reason}])
    now = datetime.now(UTC)
    row = {
        "id": uuid.uuid4().hex,
        "session_hash": session_hash,
        "kind": kind,
        "filename": filename[:255] or "upload",
        "size": size,
        "created_at": now,
        "progress": 0,
    }
    with engine.begin() as conn:
        repo.insert_upload(conn, row, now - KEEP_UPLOADS)
    return {"id": row["id"], "kind": kind, "filename": row["filename"], "size": size}


def _get(conn: Any, upload_id: str, session_hash: str) -> Any:
    upload = repo.get_upload(conn, upload_id, session_hash)
    if upload is None:
        raise NotFound("this upload is not known (it expires after a day): drop the file again")
    return upload


def put_chunk(
    engine: Engine, session_hash: str, upload_id: str, seq: int, data: bytes, chunk_bytes: int
) -> dict[str, int]:
    with engine.begin() as conn:
        upload = _get(conn, upload_id, session_hash)
        last = max(0, (upload.size - 1) // chunk_bytes)
        if not 0 <= seq <= last or not data or len(data) > chunk_bytes:
            raise InvalidInput(
                f"chunk {seq} does not fit this upload",
                [{"field": "seq", "reason": f"expected 0..{last}, at most {chunk_bytes} bytes"}],
            )
        repo.put_chunk(conn, upload_id, seq, data)
        received = sum(size for _, size in repo.chunk_sizes(conn, upload_id))
    return {"received": received, "size": int(upload.size)}


class CountingReader(io.RawIOBase):
    """A binary stream that reports how many bytes were read from it so far."""

    def __init__(self, inner: BinaryIO, on_read: Callable[[int], None]) -> None:
        self._inner = inner
        self._done = 0
        self._on_read = on_read

    def readable(self) -> bool:
        return True

    def readinto(self, target: Any) -> int:
        data = self._inner.read(len(target))
        n = len(data)
        target[:n] = data
        self._done += n
        self._on_read(self._done)
        return n


def _spool(engine: Engine, upload_id: str, seqs: list[int]) -> BinaryIO:
    """The staged chunks copied into one temporary file (kept in memory up to 8 MB).

    Copied before the import starts, because the import holds its transaction open while it
    reads: on SQLite every transaction takes the one write lock, so reading the chunks
    alongside would wait for the import itself."""
    spool = tempfile.SpooledTemporaryFile(max_size=8 * 1024 * 1024)  # noqa: SIM115 (returned)
    for seq in seqs:
        with engine.connect() as conn:
            spool.write(repo.chunk(conn, upload_id, seq))
    spool.seek(0)
    return spool  # type: ignore[return-value]


def progress(engine: Engine, session_hash: str, upload_id: str) -> dict[str, int]:
    with _progress_lock:
        running = _progress.get(upload_id)
    if running is not None and running[0] == session_hash:
        return {"done": running[1], "size": running[2]}
    with read_only(engine) as conn:
        upload = _get(conn, upload_id, session_hash)
    return {"done": int(upload.progress), "size": int(upload.size)}


def run(
    engine: Engine,
    session_hash: str,
    upload_id: str,
    *,
    apply: bool,
    mode: str = "upsert",
    on_error: str = "abort",
    max_details: int = 1000,
    delta_max: int = 10_000,
    log_keep_s: float = 86_400.0,
) -> dict[str, Any]:
    """Check (``apply=False``: a dry run) or apply a complete upload.

    A check lists the bad rows and counts what the good ones would do (it runs with
    ``on_error=skip``), so the marketer sees everything at once; applying is all or nothing
    unless ``on_error=skip`` is chosen. Whole-file problems raise :class:`InvalidFile`.
    """
    if mode not in ("upsert", "replace") or on_error not in ("abort", "skip"):
        raise InvalidInput(
            "mode is upsert or replace; on_error is abort or skip",
            [{"field": "mode", "reason": mode}, {"field": "on_error", "reason": on_error}],
        )
    with engine.connect() as conn:
        upload = _get(conn, upload_id, session_hash)
        sizes = repo.chunk_sizes(conn, upload_id)
    if [s for s, _ in sizes] != list(range(len(sizes))) or sum(n for _, n in sizes) != upload.size:
        got = sum(n for _, n in sizes)
        raise InvalidInput(
            f"the upload is incomplete ({got:,} of {upload.size:,} bytes): drop the file again",
            [{"field": "file", "reason": "incomplete upload"}],
        )
    started = time.perf_counter()
    with _progress_lock:  # from now on progress is read here, not from the database
        _progress[upload_id] = (session_hash, 0, int(upload.size))
    try:
        with _spool(engine, upload_id, [s for s, _ in sizes]) as spool:
            reporter = _Reporter(engine, upload_id, session_hash, int(upload.size))
            reader = CountingReader(spool, reporter)
            if upload.kind == "campaigns":
                data = reader.readall()
                out = import_campaigns(engine, data, upload.filename, dry_run=not apply)
                result: dict[str, Any] = {**out, "errors": []}
            else:
                res = import_fences(
                    engine,
                    io.BufferedReader(reader, buffer_size=256 * 1024),
                    upload.filename,
                    mode=mode,  # type: ignore[arg-type]
                    dry_run=not apply,
                    on_error="skip" if not apply else on_error,  # type: ignore[arg-type]
                    max_details=max_details,
                    delta_max=delta_max,
                    log_keep_s=log_keep_s,
                )
                result = res.to_dict()
    finally:
        with _progress_lock:
            _progress.pop(upload_id, None)
    if apply:
        with engine.begin() as conn:
            repo.delete_upload(conn, upload_id)
    result.update(
        kind=upload.kind, filename=upload.filename, size=int(upload.size), applied=apply,
        seconds=round(time.perf_counter() - started, 2),
    )  # fmt: skip
    return result


class _Reporter:
    """Records the bytes read: in this process always, in the database on PostgreSQL (on
    SQLite the import's transaction holds the one write lock; one process serves anyway)."""

    def __init__(self, engine: Engine, upload_id: str, session_hash: str, size: int) -> None:
        self._engine = engine
        self._upload_id = upload_id
        self._session_hash = session_hash
        self._size = size
        self._to_db = engine.dialect.name == "postgresql"
        self._last = 0.0

    def __call__(self, done: int) -> None:
        with _progress_lock:
            _progress[self._upload_id] = (self._session_hash, done, self._size)
        now = time.monotonic()
        if self._to_db and now - self._last >= 0.5:
            self._last = now
            with self._engine.begin() as conn:
                repo.set_progress(conn, self._upload_id, done)
