"""Geofences, data versions and API keys.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op
from geoalchemy2 import Geometry

from service.db.models import JSONDOC

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    if postgres:
        op.execute("CREATE EXTENSION IF NOT EXISTS postgis")
    # GeoAlchemy2's DDL hooks would call SpatiaLite functions on SQLite, which the embedded
    # default does not have: there the columns are plain EWKT text.
    point = Geometry("POINT", srid=4326, spatial_index=False) if postgres else sa.Text()
    shape = Geometry("GEOMETRY", srid=4326, spatial_index=False) if postgres else sa.Text()
    op.create_table(
        "geofences",
        sa.Column("store_id", sa.String(128), primary_key=True),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("lat", sa.Float(), nullable=False),
        sa.Column("lng", sa.Float(), nullable=False),
        sa.Column("radius_m", sa.Float(), nullable=True),
        sa.Column("geometry_json", sa.Text(), nullable=True),
        sa.Column("location", point, nullable=False),
        sa.Column("shape", shape, nullable=True),
        sa.Column("tags", JSONDOC, nullable=False),
        sa.Column("timezone", sa.String(64), nullable=False),
        sa.Column("address", sa.Text(), nullable=True),
        sa.Column("extra", JSONDOC, nullable=False),
        sa.Column("content_hash", sa.String(32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
    )
    if postgres:
        # GiST on the geography of the store point: "near a point" listings use the index
        # and stay right across the antimeridian; GiST on the shapes for analysts.
        op.execute(
            "CREATE INDEX ix_geofences_location_geog ON geofences "
            "USING gist ((location::geography))"
        )
        op.execute("CREATE INDEX ix_geofences_location ON geofences USING gist (location)")
        op.execute("CREATE INDEX ix_geofences_shape ON geofences USING gist (shape)")
        op.execute("CREATE INDEX ix_geofences_tags ON geofences USING gin (tags jsonb_path_ops)")
    else:
        op.create_index("ix_geofences_lat", "geofences", ["lat"])
    op.create_table(
        "data_versions",
        sa.Column("name", sa.String(32), primary_key=True),
        sa.Column("version", sa.BigInteger(), nullable=False),
    )
    op.bulk_insert(
        sa.table(
            "data_versions", sa.column("name", sa.String), sa.column("version", sa.BigInteger)
        ),
        [{"name": "geofences", "version": 0}],
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("label", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("api_keys")
    op.drop_table("data_versions")
    op.drop_table("geofences")
