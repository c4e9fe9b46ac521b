"""Marketer console: server-side sessions, staged uploads, fence counts per map cell.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "console_sessions",
        sa.Column("id_hash", sa.String(64), primary_key=True),
        sa.Column("key_id", sa.String(32), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("expires_at", TS, nullable=False),
    )
    op.create_index("ix_console_sessions_expires", "console_sessions", ["expires_at"])
    op.create_table(
        "console_uploads",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("session_hash", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("filename", sa.Text(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("progress", sa.BigInteger(), nullable=False, server_default="0"),
    )
    op.create_table(
        "console_upload_chunks",
        sa.Column("upload_id", sa.String(32), primary_key=True),
        sa.Column("seq", sa.Integer(), primary_key=True),
        sa.Column("data", sa.LargeBinary(), nullable=False),
    )
    op.create_table(
        "console_fence_cells",
        sa.Column("version", sa.BigInteger(), primary_key=True),
        sa.Column("cx", sa.Integer(), primary_key=True),
        sa.Column("cy", sa.Integer(), primary_key=True),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.Column("lng", sa.Float(), nullable=False),
        sa.Column("lat", sa.Float(), nullable=False),
        sa.Column("store_id", sa.String(128), nullable=False),
    )
    op.create_table(
        "console_fence_cell_versions",
        sa.Column("version", sa.BigInteger(), primary_key=True),
        sa.Column("built_at", TS, nullable=False),
    )


def downgrade() -> None:
    for table in (
        "console_fence_cell_versions",
        "console_fence_cells",
        "console_upload_chunks",
        "console_uploads",
        "console_sessions",
    ):
        op.drop_table(table)
