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
from sqlalchemy import JSON, BigInteger, DateTime, Float, String, Text, func
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
