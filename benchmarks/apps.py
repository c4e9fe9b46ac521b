"""Reference apps for ``bench_http.py``, served by uvicorn with the service's own settings.

- ``echo_app``: a plain ASGI callable that reads the body and answers a fixed small JSON
  document with orjson. No framework, no validation: the ceiling of uvicorn (uvloop +
  httptools) on this machine, which the ping endpoint is compared against.
- ``redis_floor_app``: the echo plus what any Redis-backed ping must do at the least: decode
  the JSON body (orjson) and run the service's own compare-and-set script once through the
  service's own Redis client (``service.state.redis_store``, ``service.state.resp``), storing
  the answer under the ping's key as the service does. No key check, no validation, no
  matching, no state step: the floor under the ping endpoint on this machine, so the ping's
  ratio to the echo can be read against what one Redis round trip per ping leaves.
- ``naive_app``: "the build a team would write first": FastAPI, a pydantic body model, and
  one PostGIS query per ping (``ST_DWithin`` on the sphere, as DESIGN §3 defines "inside"),
  answering the matched store ids. It is made as fast as such a design fairly gets:

  * the radius comes from a column, which alone would be a sequential scan (73 ms at 100 k
    fences, FACTS.md); a second ``ST_DWithin`` with the largest radius in the table as a
    constant lets PostgreSQL use the GiST index on ``location::geography``;
  * a small per-worker pool of ``psycopg.AsyncConnection`` (an ``asyncio.Queue``;
    psycopg_pool is not installed) so no request pays a connection set-up;
  * server-side prepared statements with ``plan_cache_mode = force_generic_plan`` (FACTS:
    the "auto" mode re-planned every call at 100 k rows) and JIT off.

  It only knows circle fences, which is all the benchmark loads, and keeps no device
  state: it answers a smaller question than the service does, which favours it.

Run (``bench_http.py`` does this itself)::

    BENCH_NAIVE_DSN=postgresql://postgres@127.0.0.1/db .venv/bin/python -m uvicorn \\
        --app-dir benchmarks apps:naive_app --workers 1 --loop uvloop --http httptools \\
        --no-access-log
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

import orjson
import psycopg
from fastapi import FastAPI, Request
from pydantic import AwareDatetime, BaseModel, Field

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# --- (a) raw ASGI echo: the ceiling ---------------------------------------------------------

_ECHO_BODY = orjson.dumps({"ping_id": "echo", "events": [], "offer": None, "reason": "echo"})
_ECHO_HEADERS = [
    (b"content-type", b"application/json"),
    (b"content-length", str(len(_ECHO_BODY)).encode()),
]


async def echo_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Read the whole body, answer a fixed JSON document (encoded once, at import)."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    more = True
    while more:  # a body may arrive in several chunks; read it all, as a real handler would
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": _ECHO_HEADERS})
    await send({"type": "http.response.body", "body": _ECHO_BODY})


# --- (b) raw ASGI + one Redis script per request: the floor of a Redis-backed ping ----------

_FLOOR: dict[str, Any] = {}


async def redis_floor_app(scope: Scope, receive: Receive, send: Send) -> None:
    """The echo, plus ``orjson.loads`` of the body and one ``EVALSHA`` of the service's
    compare-and-set script (``BENCH_FLOOR_REDIS_URL``, keys under ``BENCH_FLOOR_PREFIX``)."""
    if scope["type"] == "lifespan":
        from service.events.streams import StreamLayout
        from service.settings import Settings
        from service.state.redis_store import _CAS, _CAS_SHA, device_prefix
        from service.state.resp import LeanRedis

        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                _FLOOR.update(
                    client=LeanRedis(os.environ["BENCH_FLOOR_REDIS_URL"]),
                    layout=StreamLayout(
                        os.environ.get("BENCH_FLOOR_PREFIX", "floor"),
                        Settings.model_fields["stream_partitions"].default,
                    ),
                    sha=_CAS_SHA,
                    device_prefix=device_prefix,
                    script=_CAS.encode(),
                )
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await _FLOOR["client"].aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    chunks = []
    more = True
    while more:
        message = await receive()
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    body = b"".join(chunks)
    if scope["method"] == "POST":
        await _floor_script(orjson.loads(body))
    await send({"type": "http.response.start", "status": 200, "headers": _ECHO_HEADERS})
    await send({"type": "http.response.body", "body": _ECHO_BODY})


async def _floor_script(doc: dict[str, Any]) -> None:
    layout = _FLOOR["layout"]
    tag = _FLOOR["device_prefix"](layout, doc["device_id"])
    inbox = layout.inbox_key(layout.partition(doc["device_id"]))
    keys = [f"{tag}:state", f"{tag}:ping:{doc['ping_id']}", f"{tag}:no_consent", inbox]
    # Expected state '' and new state '' (keep), compared exactly, the default max speed
    # (250 m/s, unused on this path), no event: the script's shortest path, one answer key
    # written with the service's default TTL.
    args = [b"", b"", 3_600_000, _ECHO_BODY, 3600, b"", b"250.0", b"0"]
    await _FLOOR["client"].evalsha(_FLOOR["sha"], _FLOOR["script"], keys, args)


# --- (c) FastAPI + pydantic + one PostGIS query per ping ------------------------------------

POOL_SIZE = int(os.environ.get("BENCH_NAIVE_POOL", "4"))
# Prepared statements with a generic plan by default; "auto" is PostgreSQL's default mode.
PLAN_MODE = os.environ.get("BENCH_NAIVE_PLAN", "force_generic_plan")

# max_r is the largest radius in the table: a constant to the planner, so the GiST index on
# location::geography is usable; the first condition is the exact per-fence test.
_QUERY = """
SELECT store_id FROM geofences
WHERE ST_DWithin(location::geography,
                 ST_SetSRID(ST_MakePoint(%(lng)s, %(lat)s), 4326)::geography, radius_m, false)
  AND ST_DWithin(location::geography,
                 ST_SetSRID(ST_MakePoint(%(lng)s, %(lat)s), 4326)::geography, %(max_r)s, false)
"""


class Ping(BaseModel):
    """The same body the service accepts (DESIGN §5), validated the FastAPI way."""

    device_id: str = Field(min_length=1, max_length=128)
    user_id: str | None = Field(default=None, min_length=1, max_length=128)
    lat: float = Field(ge=-90, le=90, allow_inf_nan=False)
    lng: float = Field(ge=-180, le=180, allow_inf_nan=False)
    accuracy_m: float = Field(ge=0, allow_inf_nan=False)
    timestamp: AwareDatetime
    ping_id: str | None = Field(default=None, min_length=1, max_length=128)


class Pool:
    """A fixed set of async connections handed out through a queue."""

    def __init__(self) -> None:
        self._free: asyncio.Queue[psycopg.AsyncConnection[Any]] = asyncio.Queue()
        self._all: list[psycopg.AsyncConnection[Any]] = []

    async def open(self, dsn: str, size: int) -> None:
        for _ in range(size):
            conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True, prepare_threshold=0)
            await conn.execute(f"SET plan_cache_mode = {PLAN_MODE}")
            await conn.execute("SET jit = off")
            self._all.append(conn)
            self._free.put_nowait(conn)

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        conn = await self._free.get()
        try:
            yield conn
        finally:
            self._free.put_nowait(conn)

    async def close(self) -> None:
        for conn in self._all:
            await conn.close()


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    pool = Pool()
    await pool.open(os.environ["BENCH_NAIVE_DSN"], POOL_SIZE)
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT coalesce(max(radius_m), 0) FROM geofences")
        row = await cur.fetchone()
    app.state.pool = pool
    app.state.max_radius_m = float(row[0]) if row else 0.0
    try:
        yield
    finally:
        await pool.close()


naive_app = FastAPI(lifespan=_lifespan)


@naive_app.post("/v1/locations")
async def naive_ping(ping: Ping, request: Request) -> dict[str, Any]:
    pool: Pool = request.app.state.pool
    async with pool.connection() as conn:
        cur = await conn.execute(
            _QUERY, {"lng": ping.lng, "lat": ping.lat, "max_r": request.app.state.max_radius_m}
        )
        rows = await cur.fetchall()
    return {"device_id": ping.device_id, "store_ids": [r[0] for r in rows]}


@naive_app.get("/readyz")
async def naive_ready() -> dict[str, bool]:
    return {"ready": True}
