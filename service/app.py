"""The FastAPI application: ``create_app()`` builds it; ``lifespan`` owns every connection."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio.to_thread
from fastapi import FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from psycopg_pool import AsyncConnectionPool
from sqlalchemy import text
from sqlalchemy.exc import OperationalError
from starlette.types import Receive, Scope, Send

from service.auth import KeyCache, Role, ensure_key
from service.campaigns.router import router as campaigns_router
from service.campaigns.service import CampaignHolder
from service.caps.base import CapUnavailable
from service.caps.memory import MemoryCapStore
from service.caps.redis_caps import RedisCapStore
from service.console.router import mount as mount_console
from service.db.engine import make_engine
from service.db.migrate import upgrade
from service.events.inbox import LocalInbox
from service.events.relay import make_event_relay
from service.fences.live import IndexHolder
from service.fences.router import router as fences_router
from service.http.body_limit import BodyLimitMiddleware
from service.http.docs import error_responses, install_docs
from service.http.errors import install_error_handlers
from service.http.requests import RequestMiddleware, RouteTemplates
from service.locations.router import PingLane
from service.locations.router import router as locations_router
from service.locations.service import PingContext
from service.logs import setup_logging
from service.metrics import metrics_registry, refresh_gauges, set_pending_erasures
from service.offers.issuance import GroupCommitter, PostgresWriter, ThreadWriter
from service.offers.pool import OfferPool
from service.offers.router import router as redemptions_router
from service.offers.service import OfferContext, PostgresFacts, ThreadFacts
from service.ratelimit import DeviceRateLimiter
from service.responses import ORJSONResponse
from service.settings import Settings
from service.state.base import StateUnavailable
from service.state.memory import MemoryStateStore
from service.state.redis_store import RedisStateStore
from service.trust import MemoryTrustStore, RedisTrustStore, TrustChecker, TrustLimits, TrustStore
from service.users.erasure import Eraser
from service.users.repository import users_without_consent
from service.users.router import router as users_router
from service.webhooks.router import router as webhooks_router

log = logging.getLogger("geo_offers")


#: A dependency that is down: worth a line in the log each period, not a traceback.
_OUTAGES = (OperationalError, StateUnavailable, CapUnavailable)


async def poll(refresh: Callable[[], Awaitable[bool]], period_s: float) -> None:
    """Follow changes made through other replicas for the app's lifetime."""
    while True:
        await asyncio.sleep(period_s)
        try:
            await refresh()
        except _OUTAGES as exc:  # retry next period
            log.warning("%s: %s", getattr(refresh, "__name__", "refresh"), type(exc).__name__)
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


async def _offer_context(
    settings: Settings, engine: Any, caps: Any, trust: TrustChecker
) -> tuple[OfferContext, OfferPool | None]:
    """The offer path's database access: psycopg's async pool on PostgreSQL (facts in one
    prepared statement, issuance in group commits); SQLAlchemy in a thread on SQLite."""
    url = settings.libpq_url()
    if url is None:
        committer = GroupCommitter(
            ThreadWriter(engine), settings.issue_max_batch, max_in_flight=1
        )  # SQLite has one writer at a time
        return OfferContext(ThreadFacts(engine), caps, committer, trust), None
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        url,
        min_size=1,
        max_size=settings.db_pool_size,
        kwargs={"autocommit": True, "connect_timeout": 2},
        timeout=2.0,  # no connection within 2 s: the database is down, fail closed
        open=False,
    )
    lazy = OfferPool(pool)
    writer = PostgresWriter(lazy)
    committer = GroupCommitter(writer, settings.issue_max_batch, settings.issue_max_in_flight)
    return OfferContext(PostgresFacts(lazy), caps, committer, trust), lazy


def install_observability(app: FastAPI, settings: Settings) -> None:
    """JSON logs, request ids and timing, body limits, the device limiter and ``/metrics``."""
    setup_logging(settings.log_level)
    app.state.device_limiter = DeviceRateLimiter(settings.device_rate_per_s, settings.device_burst)
    # The last added middleware runs first: ids and timing also cover the 413s.
    app.add_middleware(
        BodyLimitMiddleware,
        max_body_bytes=settings.max_body_bytes,
        max_upload_bytes=settings.max_upload_bytes,
    )
    app.add_middleware(RequestMiddleware, templates=RouteTemplates(app.openapi))

    @app.get("/metrics", tags=["ops"], summary="Prometheus metrics", include_in_schema=False)
    def metrics(request: Request) -> Response:
        refresh_gauges(request.app.state)
        return Response(generate_latest(metrics_registry()), media_type=CONTENT_TYPE_LATEST)


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
        holder = IndexHolder(
            engine, settings.index_root, delta_max=settings.index_delta_max,
            compact_at=settings.index_compact_at,
        )  # fmt: skip
        await holder.refresh(force=True)
        campaign_holder = CampaignHolder(engine)
        await campaign_holder.refresh(force=True)
        store: Any
        caps: Any
        # Visit events: XADDed to the partition's inbox by the Redis state script, or queued
        # by the in-process step to the local inbox (written to the log by its own task).
        inbox: LocalInbox | None = None
        if settings.redis_url:
            store = RedisStateStore.from_url(
                settings.redis_url, settings.redis_prefix, settings.state_ttl_s,
                settings.ping_answer_ttl_s, cluster=settings.redis_cluster,
                partitions=settings.stream_partitions, max_speed_kmh=settings.max_speed_kmh,
            )  # fmt: skip
            await store.start()
            caps = RedisCapStore.from_url(
                settings.redis_url, settings.redis_prefix, cluster=settings.redis_cluster
            )
            trust: TrustStore = RedisTrustStore.from_url(
                settings.redis_url, settings.redis_prefix, cluster=settings.redis_cluster
            )
        else:
            inbox = LocalInbox(engine)
            inbox.start()
            store = MemoryStateStore(settings.state_ttl_s, settings.ping_answer_ttl_s, inbox=inbox)
            caps = MemoryCapStore()
            trust = MemoryTrustStore()
        app.state.event_inbox = inbox

        async def keep_denials() -> bool:
            """The consent denials in Redis, refilled from the database whenever Redis has
            none (down at start-up, or back after a restart without its data)."""
            if not await store.denials_loaded():
                await store.load_denied(
                    await anyio.to_thread.run_sync(users_without_consent, engine)
                )
                log.info("consent denials loaded into the device-state store")
            return True

        with contextlib.suppress(*_OUTAGES):  # else the poller below loads them
            await keep_denials()
        app.state.settings = settings
        app.state.engine = engine
        app.state.keys = KeyCache(engine, settings.key_cache_s)
        app.state.index_holder = holder
        app.state.campaign_holder = campaign_holder
        app.state.state_store = store
        app.state.cap_store = caps
        checker = TrustChecker(trust, TrustLimits.from_settings(settings))
        offers, pool = await _offer_context(settings, engine, caps, checker)
        app.state.ping_context = PingContext(settings, holder, store, campaign_holder, offers)
        eraser = app.state.eraser = Eraser(engine, store, caps, trust)

        async def resume_erasures() -> bool:
            await eraser.resume()
            set_pending_erasures(await anyio.to_thread.run_sync(eraser.pending))
            return True

        pollers = [
            asyncio.create_task(poll(holder.refresh, settings.index_poll_s)),
            asyncio.create_task(poll(campaign_holder.refresh, settings.index_poll_s)),
            asyncio.create_task(poll(resume_erasures, settings.erasure_retry_s)),
            asyncio.create_task(poll(keep_denials, settings.erasure_retry_s)),
        ]
        relay = make_event_relay(settings, engine)
        app.state.event_relay = relay
        if relay is not None:
            await relay.start()
        try:
            yield
        finally:
            if inbox is not None:
                await inbox.stop()
            if relay is not None:
                await relay.stop()
            for task in pollers:
                task.cancel()
            for task in pollers:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await holder.close()
            await offers.committer.close()
            if pool is not None:
                await pool.close()
            await store.close()
            await caps.close()
            await trust.close()
            engine.dispose()

    otel = settings.opentelemetry
    app = GeoOffersAPI(
        telemetry={"tracing": otel, "metrics": otel, "logs": otel},
        title="geo-offers",
        version="0.1.0",
        summary="Exact store geofences and proximity offers.",
        lifespan=lifespan,
        docs_url=None,  # served by install_docs, with assets from this service (no CDN)
        redoc_url=None,
    )
    install_error_handlers(app)
    install_docs(app)
    # With OpenTelemetry on, pings take the routed endpoints, which FastAPI instruments.
    app.ping_lane = None if otel else PingLane(settings.max_body_bytes)
    install_observability(app, settings)
    keyed = (401, 403, 413, 422, 503)
    app.include_router(locations_router, responses=error_responses(*keyed, 429))
    app.include_router(fences_router, responses=error_responses(*keyed, 404))
    app.include_router(campaigns_router, responses=error_responses(*keyed, 404))
    app.include_router(users_router, responses=error_responses(*keyed, 404))
    app.include_router(redemptions_router, responses=error_responses(*keyed, 404, 409, 410))
    app.include_router(webhooks_router, responses=error_responses(*keyed, 404))
    if settings.console:
        mount_console(app, settings)

    @app.get("/healthz", tags=["ops"], summary="Liveness")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/readyz",
        tags=["ops"],
        summary="Readiness: database, device state, index",
        responses={503: {"description": "Not ready: the checks say which part is not"}},
    )
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
