"""Typed settings, read from ``GEO_OFFERS_*`` environment variables (pydantic-settings).

Every setting has a default that runs the embedded mode: no ``DATABASE_URL`` means a SQLite
file under ``data_dir``; no ``REDIS_URL`` means device state kept in the process.
``DATABASE_URL`` and ``REDIS_URL`` without the prefix are accepted too, as platforms set them.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="GEO_OFFERS_", extra="ignore", populate_by_name=True
    )

    database_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("GEO_OFFERS_DATABASE_URL", "DATABASE_URL"),
        description="postgresql://… (PostGIS) or sqlite:///…; unset = SQLite file in data_dir.",
    )
    redis_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("GEO_OFFERS_REDIS_URL", "REDIS_URL"),
        description="redis://…; unset = device state in this process (one worker only).",
    )
    redis_prefix: str = Field(default="geo", description="Prefix of every Redis key.")
    redis_cluster: bool = Field(
        default=False,
        description="REDIS_URL names a node of a Redis Cluster (keys are hash-tagged).",
    )
    data_dir: Path = Field(default=Path(".geo-offers"), description="Embedded mode files.")

    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = Field(default=1, ge=1, description="uvicorn worker processes for `serve`.")
    keep_alive_s: float = Field(
        default=75.0,
        gt=0,
        description=(
            "How long `serve` keeps an idle HTTP connection open. Longer than the idle timeout "
            "of the load balancer or client pool in front (60 s is common), so that the other "
            "side always closes first: a server closing an idle connection just as a client "
            "reuses it drops that request (a 502 behind a balancer). uvicorn's default is 5 s."
        ),
    )
    auto_migrate: bool = Field(default=True, description="Run migrations when `serve` starts.")

    max_accuracy_m: float = Field(default=100.0, gt=0)
    offer_max_age_s: float = Field(default=300.0, gt=0)
    state_ttl_s: float = Field(default=6 * 3600.0, gt=0)
    future_tolerance_s: float = Field(
        default=60.0, ge=0, description="A ping this far ahead of the server clock is a 422."
    )
    exit_margin_m: float | None = Field(
        default=None, ge=0, description="Fixed exit hysteresis; unset = max(10 m, 20 % of radius)."
    )
    dwell_s: float = Field(
        default=300.0, gt=0, description="Time inside before the one `dwell` event of a visit."
    )
    ping_answer_ttl_s: int = Field(
        default=3600,
        gt=0,
        description="How long a retried ping gets its first answer (SDK retries come within "
        "minutes; at 24 h these answers were 99.8 % of Redis memory in the capacity plan).",
    )
    index_poll_s: float = Field(default=1.0, gt=0, description="Fence version polling period.")
    index_dir: Path | None = Field(
        default=None,
        description="Where workers of a host share index files (one per database and "
        "version, mapped read-only); unset = data_dir/index.",
    )
    index_delta_max: int = Field(
        default=10_000,
        gt=0,
        description="A change of more fences than this is logged as 'rebuild': replicas "
        "build a new index base instead of applying it as a delta.",
    )
    index_compact_at: int = Field(
        default=20_000,
        gt=0,
        description="Fences changed since a worker's index base beyond which a new base is "
        "built in the background.",
    )
    index_log_keep_s: float = Field(
        default=86_400.0,
        gt=0,
        description="Change log kept this long; a replica further behind does a full build.",
    )
    erasure_retry_s: float = Field(
        default=5.0,
        gt=0,
        description=(
            "How often each replica retries erasures left pending (Redis was down) and checks "
            "that Redis still holds the consent denials (refilled from the database if not)."
        ),
    )
    import_max_error_details: int = Field(default=1000, gt=0)
    key_cache_s: float = Field(
        default=30.0, ge=0, description="API key lookups cached this long (revocation delay)."
    )
    bootstrap_admin_key: SecretStr | None = Field(
        default=None,
        description="An admin key to accept from start-up (containers); >= 32 random chars.",
    )
    opentelemetry: bool = Field(
        default=False,
        description=(
            "FastAPI's native OpenTelemetry (traces, metrics and logs through the globally "
            "configured providers). Off by default: /metrics already exports Prometheus "
            "metrics, and looking the providers up costs CPU on every request (profiled). "
            "When on, pings take the routed endpoints, which FastAPI instruments."
        ),
    )
    log_level: str = Field(
        default="INFO",
        pattern=r"(?i)^(debug|info|warning|error|critical)$",
        description="Level of the JSON logs on stderr.",
    )
    max_body_bytes: int = Field(
        default=1024 * 1024, gt=0, description="Largest request body of JSON routes (else 413)."
    )
    max_upload_bytes: int = Field(
        default=512 * 1024 * 1024,
        gt=0,
        description="Largest body of /v1/geofences/import and /v1/campaigns/import (else 413).",
    )
    device_rate_per_s: float = Field(
        default=5.0,
        ge=0,
        description="Pings per second one device may sustain on this replica (0 = no limit).",
    )
    device_burst: int = Field(
        default=20, ge=1, description="Pings one device may send at once before the rate applies."
    )

    console: bool = Field(
        default=True, description="Serve the marketer console at /console (DESIGN §9)."
    )
    console_session_ttl_s: float = Field(
        default=8 * 3600.0, gt=0, description="A console sign-in lasts this long (absolute)."
    )
    console_basemap_url: str | None = Field(
        default=None,
        description="Raster tile URL template ({z}/{x}/{y}) drawn under the console's map; "
        "unset = fences on a plain background (works offline).",
    )
    console_basemap_attribution: str = Field(
        default="", description="Attribution text shown with the base map tiles."
    )

    # -- event export (DESIGN §10): the event log, webhooks, Redis Streams -------------
    event_relay: bool = Field(
        default=True,
        description="Deliver webhooks and relay events to Redis Streams from this process "
        "(every replica may; leases keep each delivery to one at a time).",
    )
    relay_process: bool = Field(
        default=True,
        description="On PostgreSQL, `geo-offers serve` runs the relays in one process of its "
        "own beside the HTTP workers (which then run none), started again if it dies; false: "
        "each worker runs them (EVENT_RELAY). The embedded SQLite default always runs them in "
        "its one process.",
    )
    events_poll_s: float = Field(
        default=1.0,
        gt=0,
        description="How often the relays look for new events and due deliveries.",
    )
    event_retention_s: float = Field(
        default=7 * 86_400.0,
        gt=0,
        description="Handled events (and their finished deliveries) are kept this long, for "
        "replays and the deliveries listing, then deleted.",
    )
    webhook_timeout_s: float = Field(
        default=10.0, gt=0, description="Whole-request timeout of one delivery attempt."
    )
    webhook_concurrency: int = Field(
        default=4, ge=1, description="Deliveries in flight per endpoint in each process."
    )
    webhook_backoff_base_s: float = Field(
        default=5.0, gt=0, description="Delay after the first failed attempt; doubles after each."
    )
    webhook_backoff_max_s: float = Field(
        default=6 * 3600.0, gt=0, description="Longest delay between two attempts."
    )
    webhook_retry_for_s: float = Field(
        default=3 * 86_400.0, gt=0, description="A delivery is retried this long, then failed."
    )
    webhook_retry_after_max_s: float = Field(
        default=86_400.0, ge=0, description="Longest Retry-After honoured (longer is capped)."
    )
    webhook_disable_after_s: float = Field(
        default=5 * 86_400.0,
        gt=0,
        description="An endpoint that has failed every attempt this long is disabled.",
    )
    webhook_secret_overlap_s: float = Field(
        default=86_400.0,
        ge=0,
        description="After a secret rotation, the old secret also signs for this long.",
    )
    stream_partitions: int = Field(
        default=64,
        ge=1,
        le=1024,
        description="Redis Streams the events are spread over (by device, else user); a "
        "device's state keys carry its partition's hash tag, so this also spreads devices "
        "over a Redis Cluster's slots. Fixed for the life of a deployment.",
    )
    stream_maxlen: int = Field(
        default=100_000,
        ge=100,
        description="Approximate length each event stream is trimmed to (XADD MAXLEN ~).",
    )

    # -- trust (DESIGN §11) ---------------------------------------------------------------
    max_speed_kmh: float = Field(
        default=900.0,
        gt=0,
        description="Faster travel between a device's consecutive accepted pings is refused.",
    )
    trust_max_devices_per_user: int = Field(
        default=5, ge=1, description="More devices for one user id in the window: no offer."
    )
    trust_max_users_per_device: int = Field(
        default=5, ge=1, description="More user ids on one device in the window: no offer."
    )
    trust_sharing_window_s: float = Field(
        default=7 * 86_400.0, gt=0, description="Window of the device/user sharing checks."
    )

    db_pool_size: int = Field(
        default=8,
        ge=1,
        description="PostgreSQL connections per worker for the offer path (facts, issuance).",
    )
    issue_max_batch: int = Field(
        default=256,
        ge=1,
        description="Most issuances committed in one transaction (group commit).",
    )
    issue_max_in_flight: int = Field(
        default=2,
        ge=1,
        description="Issuance transactions committing at once per worker; the next batch "
        "forms while they commit.",
    )

    @field_validator("database_url", "redis_url", "console_basemap_url")
    @classmethod
    def _blank_is_none(cls, value: str | None) -> str | None:
        return value or None

    def sqlalchemy_url(self) -> str:
        """The SQLAlchemy URL: psycopg 3 for PostgreSQL, a file under data_dir by default."""
        url = self.database_url
        if url is None:
            return f"sqlite:///{(self.data_dir / 'geo-offers.db').as_posix()}"
        for prefix in ("postgresql://", "postgres://"):
            if url.startswith(prefix):
                return "postgresql+psycopg://" + url[len(prefix) :]
        return url

    def libpq_url(self) -> str | None:
        """The PostgreSQL URL as libpq takes it (psycopg's async pool), or None on SQLite."""
        url = self.database_url
        if url is None or not url.startswith(("postgresql", "postgres:")):
            return None
        scheme, _, rest = url.partition("://")
        return "postgresql://" + rest if "+" in scheme else url

    @property
    def index_root(self) -> Path:
        return self.index_dir if self.index_dir is not None else self.data_dir / "index"

    @property
    def embedded_state(self) -> bool:
        return self.redis_url is None
