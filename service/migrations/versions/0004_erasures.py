"""Erasures: the durable record of each erasure until its last step is done.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

from service.db.models import JSONDOC

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "erasures",
        sa.Column("user_hash", sa.String(64), primary_key=True),
        sa.Column("user_id", sa.String(128), nullable=True),
        sa.Column("devices", JSONDOC, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("requested_at", TS, nullable=False),
        sa.Column("completed_at", TS, nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("lease_until", TS, nullable=True),
    )
    op.create_index("ix_erasures_pending", "erasures", ["status", "requested_at"])


def downgrade() -> None:
    op.drop_table("erasures")
