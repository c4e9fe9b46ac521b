"""The FastAPI application: ``create_app()`` builds it; ``lifespan`` owns every connection."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio.to_thread
from fastapi import FastAPI, Request
from sqlalchemy import text
from starlette.types import Receive, Scope, Send

from service.auth import KeyCache, Role, ensure_key
from service.campaigns.router import router as campaigns_router
from service.campaigns.service import CampaignHolder
from service.caps.memory import MemoryCapStore
from service.caps.redis_caps import RedisCapStore
from service.db.engine import make_engine
from service.db.migrate import upgrade
from service.errors import install_error_handlers
from service.fences import builder
from service.fences.router import router as fences_router
from service.fences.service import IndexHolder
from service.locations.router import PingLane
from service.locations.router import router as locations_router
from service.locations.service import PingContext
from service.observability import install_observability
from service.offers.router import router as redemptions_router
from service.offers.service import OfferContext
from service.responses import ORJSONResponse
from service.settings import Settings
from service.state.memory import MemoryStateStore
from service.state.redis_store import RedisStateStore
from service.users.repository import users_without_consent
from service.users.router import router as users_router

log = logging.getLogger("geo_offers")


async def poll(refresh: Callable[[], Awaitable[bool]], period_s: float) -> None:
    """Follow changes made through other replicas for the app's lifetime."""
    while True:
        await asyncio.sleep(period_s)
        try:
            await refresh()
        except Exception:  # keep serving what was loaded last; retry next period
            log.exception("refresh failed")


class GeoOffersAPI(FastAPI):
    """FastAPI, with the two ping routes answered by :class:`PingLane` before the
    middleware stack and the routing (the hot path; see ``service/locations/router.py``).
    Every other request, and every request when ``ping_lane`` is None, is FastAPI's."""

    ping_lane: PingLane | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        lane = self.ping_lane
        if lane is not None and lane.handles(scope):
            scope["app"] = self
            await lane(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def create_app(settings: Settings | None = None) -> GeoOffersAPI:
    settings = settings or Settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = make_engine(settings)
        if settings.auto_migrate:
            await anyio.to_thread.run_sync(upgrade, engine)
        if settings.bootstrap_admin_key is not None:
            key = settings.bootstrap_admin_key.get_secret_value()
            await anyio.to_thread.run_sync(ensure_key, engine, key, Role.admin, "bootstrap")
        holder = IndexHolder(engine)
        await holder.refresh(force=True)
        builder.prestart()  # the process that will build the next index, started now
        campaign_holder = CampaignHolder(engine)
        await campaign_holder.refresh(force=True)
        store: Any
        caps: Any
        if settings.redis_url:
            store = RedisStateStore.from_url(
                settings.redis_url, settings.redis_prefix, settings.state_ttl_s,
                settings.ping_answer_ttl_s, cluster=settings.redis_cluster,
            )  # fmt: skip
            await store.start()
            caps = RedisCapStore.from_url(
                settings.redis_url, settings.redis_prefix, cluster=settings.redis_cluster
            )
        else:
            store = MemoryStateStore(settings.state_ttl_s, settings.ping_answer_ttl_s)
            caps = MemoryCapStore()
        with contextlib.suppress(Exception):  # Redis down at start: refilled on next start
            await store.load_denied(await anyio.to_thread.run_sync(users_without_consent, engine))
        app.state.settings = settings
        app.state.engine = engine
        app.state.keys = KeyCache(engine, settings.key_cache_s)
        app.state.index_holder = holder
        app.state.campaign_holder = campaign_holder
        app.state.state_store = store
        app.state.cap_store = caps
        app.state.ping_context = PingContext(
            settings, holder, store, campaign_holder, OfferContext(engine, caps)
        )
        pollers = [
            asyncio.create_task(poll(holder.refresh, settings.index_poll_s)),
            asyncio.create_task(poll(campaign_holder.refresh, settings.index_poll_s)),
        ]
        try:
            yield
        finally:
            for task in pollers:
                task.cancel()
            for task in pollers:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await store.close()
            await caps.close()
            engine.dispose()

    otel = settings.opentelemetry
    app = GeoOffersAPI(
        telemetry={"tracing": otel, "metrics": otel, "logs": otel},
        title="geo-offers",
        version="0.1.0",
        summary="Exact store geofences and proximity offers.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    # With OpenTelemetry on, pings take the routed endpoints, which FastAPI instruments.
    app.ping_lane = None if otel else PingLane(settings.max_body_bytes)
    install_observability(app, settings)
    app.include_router(locations_router)
    app.include_router(fences_router)
    app.include_router(campaigns_router)
    app.include_router(users_router)
    app.include_router(redemptions_router)
    if settings.console:
        from service.console import mount as mount_console

        mount_console(app, settings)

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
