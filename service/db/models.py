"""Tables of the store of record.

On PostgreSQL the store point and polygon shapes are PostGIS ``geometry(…, 4326)`` columns
with GiST indexes, for analysts (SQL, QGIS) and for "near a point" listings. On the embedded
SQLite default the same columns hold EWKT text. The service itself rebuilds its in-memory
index from the plain columns (lat, lng, radius_m, geometry_json), never from spatial SQL.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from geoalchemy2 import Geometry
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    Integer,
    LargeBinary,
    String,
    Text,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

POINT = Geometry("POINT", srid=4326, spatial_index=False).with_variant(Text(), "sqlite")
SHAPE = Geometry("GEOMETRY", srid=4326, spatial_index=False).with_variant(Text(), "sqlite")
JSONDOC = JSON().with_variant(JSONB(), "postgresql")


class Base(DeclarativeBase):
    pass


class Geofence(Base):
    __tablename__ = "geofences"

    store_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    name: Mapped[str] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(String(16))  # circle | polygon
    lat: Mapped[float] = mapped_column(Float)
    lng: Mapped[float] = mapped_column(Float)
    radius_m: Mapped[float | None] = mapped_column(Float, nullable=True)
    geometry_json: Mapped[str | None] = mapped_column(Text, nullable=True)
    location: Mapped[Any] = mapped_column(POINT)
    shape: Mapped[Any | None] = mapped_column(SHAPE, nullable=True)
    tags: Mapped[list[str]] = mapped_column(JSONDOC)
    timezone: Mapped[str] = mapped_column(String(64))
    address: Mapped[str | None] = mapped_column(Text, nullable=True)
    extra: Mapped[dict[str, Any]] = mapped_column(JSONDOC)
    content_hash: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class GeofenceVersion(Base):
    """One row per fence data version written through the service: what replicas need to
    follow it. ``kind`` is ``delta`` (its changed store ids are in ``geofence_changes``),
    ``rebuild`` (too many changes: replicas rebuild) or ``anchor`` (a version reached without
    a log, e.g. before this table existed: replicas rebuild). ``token`` is random per row: an
    index file names the version and token it holds, so a file is only reused for the very
    data it was built from (a database restored or reset gets other tokens)."""

    __tablename__ = "geofence_versions"

    version: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    token: Mapped[str] = mapped_column(String(32))
    kind: Mapped[str] = mapped_column(String(16))
    changes: Mapped[int] = mapped_column(Integer)
    committed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class GeofenceChange(Base):
    """A store id changed (upserted or deleted) by a ``delta`` version."""

    __tablename__ = "geofence_changes"

    version: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    store_id: Mapped[str] = mapped_column(String(128), primary_key=True)


class DataVersion(Base):
    """One counter per data set; bumped in the same transaction as every change to it.

    Replicas poll it to know when to rebuild their index; imports lock its row to run one
    at a time across replicas.
    """

    __tablename__ = "data_versions"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    label: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class CampaignRow(Base):
    """A campaign as imported: the validated document, plus columns for listing."""

    __tablename__ = "campaigns"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16))
    doc: Mapped[dict[str, Any]] = mapped_column(JSONDOC)
    content_hash: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class PolicyRow(Base):
    """Cross-campaign policies (caps, channel caps, minimum gap, quiet hours): one row."""

    __tablename__ = "policies"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    doc: Mapped[dict[str, Any]] = mapped_column(JSONDOC)


class UserRow(Base):
    __tablename__ = "users"

    user_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    attributes: Mapped[dict[str, Any]] = mapped_column(JSONDOC)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class UserEventRow(Base):
    __tablename__ = "user_events"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(128))
    type: Mapped[str] = mapped_column(String(64))
    occurred_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    store_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    properties: Mapped[dict[str, Any]] = mapped_column(JSONDOC)
    received_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )


class OfferRow(Base):
    """An issued offer (coupon): written before the ping is answered."""

    __tablename__ = "offers"

    offer_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    campaign_id: Mapped[str] = mapped_column(String(64))
    user_key: Mapped[str | None] = mapped_column(String(128), nullable=True)
    device_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    store_id: Mapped[str] = mapped_column(String(128))
    channel: Mapped[str] = mapped_column(String(16))
    coupon_code: Mapped[str] = mapped_column(String(96))
    fixed_code: Mapped[bool] = mapped_column()
    title: Mapped[str] = mapped_column(Text)
    message: Mapped[str | None] = mapped_column(Text, nullable=True)
    value: Mapped[float] = mapped_column(Float)
    distance_m: Mapped[float] = mapped_column(Float)
    ping_id: Mapped[str] = mapped_column(String(128))
    issued_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ExposureRow(Base):
    """First time a user reached a campaign's arm assignment (treatment or control)."""

    __tablename__ = "exposures"

    campaign_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_key: Mapped[str] = mapped_column(String(128), primary_key=True)
    arm: Mapped[str] = mapped_column(String(16))
    first_exposed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    store_id: Mapped[str | None] = mapped_column(String(128), nullable=True)


class RedemptionRow(Base):
    __tablename__ = "redemptions"

    offer_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    coupon_code: Mapped[str] = mapped_column(String(96))
    campaign_id: Mapped[str] = mapped_column(String(64))
    redeemed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    store_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    amount: Mapped[float | None] = mapped_column(Float, nullable=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(128), nullable=True, unique=True)
    response: Mapped[dict[str, Any]] = mapped_column(JSONDOC)


class ErasureRow(Base):
    """An erasure, from its request until its last step (Redis) is done, and after.

    Keyed by a SHA-256 of the user id: the raw id and the devices are kept only while the
    erasure is pending (its remaining steps need them) and cleared when it is done.
    """

    __tablename__ = "erasures"

    user_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    devices: Mapped[list[str]] = mapped_column(JSONDOC)
    status: Mapped[str] = mapped_column(String(16))  # pending | done
    requested_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class ConsoleSession(Base):
    """A marketer's console sign-in; only a hash of the cookie's session id is stored, so
    every replica knows the session and a leaked table row cannot be replayed."""

    __tablename__ = "console_sessions"

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    key_id: Mapped[str] = mapped_column(String(32))  # the admin key signed in with
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ConsoleUpload(Base):
    """A file dropped in the console, staged in chunks until it is checked and applied."""

    __tablename__ = "console_uploads"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    session_hash: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))  # geofences | campaigns
    filename: Mapped[str] = mapped_column(Text)
    size: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    progress: Mapped[int] = mapped_column(BigInteger, default=0)  # bytes read by a check


class ConsoleFenceCell(Base):
    """Fences counted per grid cell for one fence version: the console map's zoomed-out
    tiles on PostgreSQL read these instead of aggregating the whole table on every miss."""

    __tablename__ = "console_fence_cells"

    version: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    cx: Mapped[int] = mapped_column(Integer, primary_key=True)
    cy: Mapped[int] = mapped_column(Integer, primary_key=True)
    n: Mapped[int] = mapped_column(Integer)
    lng: Mapped[float] = mapped_column(Float)  # mean store point of the cell's fences
    lat: Mapped[float] = mapped_column(Float)
    store_id: Mapped[str] = mapped_column(String(128))  # the one store of a cell with n = 1


class ConsoleFenceCellVersion(Base):
    """The fence versions whose cells are complete in ``console_fence_cells``."""

    __tablename__ = "console_fence_cell_versions"

    version: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    built_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ConsoleUploadChunk(Base):
    __tablename__ = "console_upload_chunks"

    upload_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)


# Integer on SQLite, where only an INTEGER PRIMARY KEY autoincrements (the rowid).
SEQ = BigInteger().with_variant(Integer(), "sqlite")


class EventRow(Base):
    """The event log (an outbox): written in the transaction of what it describes, then
    fanned out to webhook deliveries and relayed to Redis Streams (``service.events``)."""

    __tablename__ = "events"

    seq: Mapped[int] = mapped_column(SEQ, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(40), unique=True)
    type: Mapped[str] = mapped_column(String(32))
    occurred_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    recorded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    data: Mapped[dict[str, Any]] = mapped_column(JSONDOC)
    store_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    store_tags: Mapped[list[str]] = mapped_column(JSONDOC)
    user_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    partition_key: Mapped[str] = mapped_column(String(128))
    fanned_out: Mapped[bool] = mapped_column(Boolean, default=False)
    streamed: Mapped[bool] = mapped_column(Boolean, default=False)


class WebhookEndpointRow(Base):
    __tablename__ = "webhook_endpoints"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    url: Mapped[str] = mapped_column(Text)
    event_types: Mapped[list[str] | None] = mapped_column(JSONDOC, nullable=True)
    store_tags: Mapped[list[str] | None] = mapped_column(JSONDOC, nullable=True)
    secret: Mapped[str] = mapped_column(String(128))
    previous_secret: Mapped[str | None] = mapped_column(String(128), nullable=True)
    previous_secret_expires_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), nullable=True
    )
    enabled: Mapped[bool] = mapped_column(Boolean)
    disabled_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    disabled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    failing_since: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class WebhookDeliveryRow(Base):
    """One event to one endpoint. ``next_attempt_at`` doubles as the lease: a worker that
    claims a delivery moves it past the attempt's timeout, so a worker killed mid-attempt
    leaves it due again; ``lease_token`` keeps a late worker from overwriting a newer result."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[int] = mapped_column(SEQ, primary_key=True, autoincrement=True)
    endpoint_id: Mapped[str] = mapped_column(String(32))
    event_seq: Mapped[int] = mapped_column(BigInteger)
    event_id: Mapped[str] = mapped_column(String(40))
    status: Mapped[str] = mapped_column(String(16))  # pending | delivered | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    replay: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    lease_token: Mapped[str | None] = mapped_column(String(32), nullable=True)
    last_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    last_status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
