"""The FastAPI application: ``create_app()`` builds it; ``lifespan`` owns every connection."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import anyio.to_thread
from fastapi import FastAPI, Request
from sqlalchemy import text

from service.auth import KeyCache
from service.db.engine import make_engine
from service.db.migrate import upgrade
from service.errors import install_error_handlers
from service.fences.router import router as fences_router
from service.fences.service import IndexHolder
from service.locations.router import router as locations_router
from service.locations.service import PingContext
from service.responses import ORJSONResponse
from service.settings import Settings
from service.state.memory import MemoryStateStore
from service.state.redis_store import RedisStateStore

log = logging.getLogger("geo_offers")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = make_engine(settings)
        if settings.auto_migrate:
            await anyio.to_thread.run_sync(upgrade, engine)
        holder = IndexHolder(engine)
        await holder.refresh(force=True)
        store: Any
        if settings.redis_url:
            store = RedisStateStore.from_url(
                settings.redis_url, settings.redis_prefix, settings.state_ttl_s,
                settings.ping_answer_ttl_s,
            )  # fmt: skip
        else:
            store = MemoryStateStore(settings.state_ttl_s, settings.ping_answer_ttl_s)
        app.state.settings = settings
        app.state.engine = engine
        app.state.keys = KeyCache(engine, settings.key_cache_s)
        app.state.index_holder = holder
        app.state.state_store = store
        app.state.ping_context = PingContext(settings, holder, store)
        poller = asyncio.create_task(holder.poll(settings.index_poll_s))
        try:
            yield
        finally:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
            await store.close()
            engine.dispose()

    app = FastAPI(
        title="geo-offers",
        version="0.1.0",
        summary="Exact store geofences and proximity offers.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.include_router(locations_router)
    app.include_router(fences_router)

    @app.get("/healthz", tags=["ops"], summary="Liveness")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"], summary="Readiness: database, device state, index")
    async def readyz(request: Request) -> ORJSONResponse:
        state = request.app.state

        def db_ok() -> bool:
            try:
                with state.engine.connect() as conn:
                    conn.execute(text("SELECT 1"))
                return True
            except Exception:
                return False

        holder: IndexHolder = state.index_holder
        checks = {
            "database": await anyio.to_thread.run_sync(db_ok),
            "state": await state.state_store.ready(),
            "index": holder.index is not None,
        }
        body: dict[str, Any] = {
            "ready": all(checks.values()),
            "checks": checks,
            "index": {"version": holder.version, "fences": len(holder.index or ())},
        }
        return ORJSONResponse(body, 200 if body["ready"] else 503)

    return app
