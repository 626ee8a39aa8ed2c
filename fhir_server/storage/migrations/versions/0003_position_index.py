"""Position index for Location ``near`` searches.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22 03:15:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "idx_position",
        sa.Column("rid", sa.BigInteger(), nullable=False),
        sa.Column("sp", sa.BigInteger(), nullable=False),
        sa.Column("lat", sa.Float(), nullable=False),
        sa.Column("lng", sa.Float(), nullable=False),
    )
    with op.batch_alter_table("idx_position", schema=None) as batch_op:
        batch_op.create_index("ix_position_sp_lat_lng", ["sp", "lat", "lng"], unique=False)
        batch_op.create_index("ix_position_rid", ["rid"], unique=False)


def downgrade() -> None:
    op.drop_table("idx_position")
