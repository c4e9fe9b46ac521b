"""The event log (outbox), webhook endpoints and their deliveries.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

from service.db.models import JSONDOC, SEQ

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("seq", SEQ, primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(40), nullable=False, unique=True),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("occurred_at", TS, nullable=False),
        sa.Column("recorded_at", TS, nullable=False),
        sa.Column("data", JSONDOC, nullable=False),
        sa.Column("store_id", sa.String(128), nullable=True),
        sa.Column("store_tags", JSONDOC, nullable=False),
        sa.Column("user_id", sa.String(128), nullable=True),
        sa.Column("partition_key", sa.String(128), nullable=False),
        sa.Column("fanned_out", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("streamed", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    # The relays read only what they have not handled yet: small partial indexes.
    for flag in ("fanned_out", "streamed"):
        op.create_index(
            f"ix_events_not_{flag}",
            "events",
            ["seq"],
            postgresql_where=sa.text(f"NOT {flag}"),
            sqlite_where=sa.text(f"NOT {flag}"),
        )
    op.create_index("ix_events_recorded_at", "events", ["recorded_at"])
    # Erasure finds a user's events by user id and by the user's devices.
    op.create_index("ix_events_user_id", "events", ["user_id"])
    op.create_index("ix_events_partition_key", "events", ["partition_key"])
    op.create_table(
        "webhook_endpoints",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("event_types", JSONDOC, nullable=True),
        sa.Column("store_tags", JSONDOC, nullable=True),
        sa.Column("secret", sa.String(128), nullable=False),
        sa.Column("previous_secret", sa.String(128), nullable=True),
        sa.Column("previous_secret_expires_at", TS, nullable=True),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("disabled_reason", sa.Text(), nullable=True),
        sa.Column("disabled_at", TS, nullable=True),
        sa.Column("failing_since", TS, nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
    )
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", SEQ, primary_key=True, autoincrement=True),
        sa.Column("endpoint_id", sa.String(32), nullable=False),
        sa.Column("event_seq", sa.BigInteger(), nullable=False),
        sa.Column("event_id", sa.String(40), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("replay", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("next_attempt_at", TS, nullable=False),
        sa.Column("lease_token", sa.String(32), nullable=True),
        sa.Column("last_attempt_at", TS, nullable=True),
        sa.Column("last_status_code", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("delivered_at", TS, nullable=True),
    )
    op.create_index(
        "ix_webhook_deliveries_due",
        "webhook_deliveries",
        ["endpoint_id", "next_attempt_at"],
        postgresql_where=sa.text("status = 'pending'"),
        sqlite_where=sa.text("status = 'pending'"),
    )
    op.create_index("ix_webhook_deliveries_list", "webhook_deliveries", ["endpoint_id", "id"])
    op.create_index("ix_webhook_deliveries_event", "webhook_deliveries", ["event_seq"])


def downgrade() -> None:
    for table in ("webhook_deliveries", "webhook_endpoints", "events"):
        op.drop_table(table)
