"""The fence change log: one row per version, the changed store ids of delta versions.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "geofence_versions",
        sa.Column("version", sa.BigInteger(), primary_key=True),
        sa.Column("token", sa.String(32), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("changes", sa.Integer(), nullable=False),
        sa.Column("committed_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "geofence_changes",
        sa.Column("version", sa.BigInteger(), primary_key=True),
        sa.Column("store_id", sa.String(128), primary_key=True),
    )


def downgrade() -> None:
    op.drop_table("geofence_changes")
    op.drop_table("geofence_versions")
