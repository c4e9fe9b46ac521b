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
    index_poll_s: float = Field(default=2.0, gt=0, description="Fence version polling period.")
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

    @field_validator("database_url", "redis_url")
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
    def embedded_state(self) -> bool:
        return self.redis_url is None
