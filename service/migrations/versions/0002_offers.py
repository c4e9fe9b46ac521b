"""Campaigns, policies, users and their events, offers, exposures, redemptions.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

from service.db.models import JSONDOC

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "campaigns",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("doc", JSONDOC, nullable=False),
        sa.Column("content_hash", sa.String(32), nullable=False),
        sa.Column("created_at", TS, server_default=sa.func.now()),
        sa.Column("updated_at", TS, server_default=sa.func.now()),
    )
    op.create_table(
        "policies",
        sa.Column("name", sa.String(32), primary_key=True),
        sa.Column("doc", JSONDOC, nullable=False),
    )
    op.bulk_insert(
        sa.table(
            "data_versions", sa.column("name", sa.String), sa.column("version", sa.BigInteger)
        ),
        [{"name": "campaigns", "version": 0}],
    )
    op.create_table(
        "users",
        sa.Column("user_id", sa.String(128), primary_key=True),
        sa.Column("attributes", JSONDOC, nullable=False),
        sa.Column("created_at", TS, server_default=sa.func.now()),
        sa.Column("updated_at", TS, server_default=sa.func.now()),
    )
    op.create_table(
        "user_events",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("user_id", sa.String(128), nullable=False),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("occurred_at", TS, nullable=False),
        sa.Column("store_id", sa.String(128), nullable=True),
        sa.Column("properties", JSONDOC, nullable=False),
        sa.Column("received_at", TS, server_default=sa.func.now()),
    )
    op.create_index("ix_user_events_user_time", "user_events", ["user_id", "occurred_at"])
    op.create_table(
        "offers",
        sa.Column("offer_id", sa.String(32), primary_key=True),
        sa.Column("campaign_id", sa.String(64), nullable=False),
        sa.Column("user_key", sa.String(128), nullable=True),
        sa.Column("device_id", sa.String(128), nullable=True),
        sa.Column("store_id", sa.String(128), nullable=False),
        sa.Column("channel", sa.String(16), nullable=False),
        sa.Column("coupon_code", sa.String(96), nullable=False),
        sa.Column("fixed_code", sa.Boolean(), nullable=False),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("distance_m", sa.Float(), nullable=False),
        sa.Column("ping_id", sa.String(128), nullable=False),
        sa.Column("issued_at", TS, nullable=False),
        sa.Column("expires_at", TS, nullable=False),
    )
    op.create_index("ix_offers_campaign", "offers", ["campaign_id", "issued_at"])
    op.create_index("ix_offers_user", "offers", ["user_key"])
    op.create_index("ix_offers_code", "offers", ["coupon_code"])
    # A unique code identifies one offer; a campaign's fixed code is shared by its offers.
    op.create_index(
        "ux_offers_unique_code",
        "offers",
        ["coupon_code"],
        unique=True,
        postgresql_where=sa.text("NOT fixed_code"),
        sqlite_where=sa.text("NOT fixed_code"),
    )
    op.create_table(
        "exposures",
        sa.Column("campaign_id", sa.String(64), primary_key=True),
        sa.Column("user_key", sa.String(128), primary_key=True),
        sa.Column("arm", sa.String(16), nullable=False),
        sa.Column("first_exposed_at", TS, nullable=False),
        sa.Column("store_id", sa.String(128), nullable=True),
    )
    op.create_table(
        "redemptions",
        sa.Column("offer_id", sa.String(32), primary_key=True),
        sa.Column("coupon_code", sa.String(96), nullable=False),
        sa.Column("campaign_id", sa.String(64), nullable=False),
        sa.Column("redeemed_at", TS, nullable=False),
        sa.Column("store_id", sa.String(128), nullable=True),
        sa.Column("amount", sa.Float(), nullable=True),
        sa.Column("idempotency_key", sa.String(128), nullable=True, unique=True),
        sa.Column("response", JSONDOC, nullable=False),
    )
    op.create_index("ix_redemptions_campaign", "redemptions", ["campaign_id"])


def downgrade() -> None:
    for table in (
        "redemptions",
        "exposures",
        "offers",
        "user_events",
        "users",
        "policies",
        "campaigns",
    ):
        op.drop_table(table)
    op.execute("DELETE FROM data_versions WHERE name = 'campaigns'")
