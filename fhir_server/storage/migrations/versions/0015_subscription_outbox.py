"""The notification outbox and websocket binding tokens (notify/).

Why an outbox in the database: a notification is written in the same transaction as the change it
announces, so a change is never committed without its notification nor the reverse, and what is
not yet delivered survives a restart; workers deliver from it at least once (R19).

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-07 13:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "subscription_outbox",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("notification_id", sa.String(64), nullable=False, unique=True),
        sa.Column("subscription", sa.String(64), nullable=False),
        sa.Column("event_number", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.String(24), nullable=False),
        sa.Column("focus", sa.String(200), nullable=True),
        sa.Column("origin", sa.String(64), nullable=True),
        sa.Column("channel", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_us", sa.BigInteger(), nullable=False),
        sa.Column("lease_until_us", sa.BigInteger(), nullable=True),
        sa.Column("created_us", sa.BigInteger(), nullable=False),
        sa.Column("delivered_us", sa.BigInteger(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
    )
    op.create_index("ix_subscription_outbox_due", "subscription_outbox", ["status", "next_attempt_us"])
    op.create_index("ix_subscription_outbox_subscription", "subscription_outbox", ["subscription", "event_number"])
    op.create_table(
        "subscription_ws_tokens",
        sa.Column("token_hash", sa.String(64), primary_key=True),
        sa.Column("subscription", sa.String(64), nullable=False),
        sa.Column("expires_us", sa.BigInteger(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("subscription_ws_tokens")
    op.drop_table("subscription_outbox")
