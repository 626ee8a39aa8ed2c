"""Initial schema: current and history resource tables, typed search index tables.

Revision ID: 0001
Revises:
Create Date: 2026-11-22 01:07:39.037046
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(sa.schema.CreateSequence(sa.Sequence("resources_rid_seq")))
    op.create_table(
        "idx_date",
        sa.Column("rid", sa.BigInteger(), nullable=False),
        sa.Column("sp", sa.BigInteger(), nullable=False),
        sa.Column("lo", sa.BigInteger(), nullable=False),
        sa.Column("hi", sa.BigInteger(), nullable=False),
    )
    with op.batch_alter_table("idx_date", schema=None) as batch_op:
        batch_op.create_index("ix_date_rid", ["rid"], unique=False)
        batch_op.create_index("ix_date_sp_lo_hi", ["sp", "lo", "hi"], unique=False)

    op.create_table(
        "idx_number",
        sa.Column("rid", sa.BigInteger(), nullable=False),
        sa.Column("sp", sa.BigInteger(), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("lo", sa.Float(), nullable=False),
        sa.Column("hi", sa.Float(), nullable=False),
    )
    with op.batch_alter_table("idx_number", schema=None) as batch_op:
        batch_op.create_index("ix_number_rid", ["rid"], unique=False)
        batch_op.create_index("ix_number_sp_lo", ["sp", "lo", "hi"], unique=False)

    op.create_table(
        "idx_quantity",
        sa.Column("rid", sa.BigInteger(), nullable=False),
        sa.Column("sp", sa.BigInteger(), nullable=False),
        sa.Column("system", sa.Text(), nullable=True),
        sa.Column("code", sa.Text(), nullable=True),
        sa.Column("unit", sa.Text(), nullable=True),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("lo", sa.Float(), nullable=False),
        sa.Column("hi", sa.Float(), nullable=False),
    )
    with op.batch_alter_table("idx_quantity", schema=None) as batch_op:
        batch_op.create_index("ix_quantity_rid", ["rid"], unique=False)
        batch_op.create_index("ix_quantity_sp_lo", ["sp", "lo", "hi"], unique=False)

    op.create_table(
        "idx_reference",
        sa.Column("rid", sa.BigInteger(), nullable=False),
        sa.Column("sp", sa.BigInteger(), nullable=False),
        sa.Column("target_type", sa.String(length=64), nullable=True),
        sa.Column("target_id", sa.String(length=64), nullable=True),
        sa.Column("target_version", sa.String(length=64), nullable=True),
        sa.Column("url", sa.Text(), nullable=True),
    )
    with op.batch_alter_table("idx_reference", schema=None) as batch_op:
        batch_op.create_index("ix_reference_rid", ["rid", "sp"], unique=False)
        batch_op.create_index("ix_reference_target", ["target_id", "target_type", "sp"], unique=False)
        batch_op.create_index("ix_reference_url", ["url"], unique=False)

    op.create_table(
        "idx_string",
        sa.Column("rid", sa.BigInteger(), nullable=False),
        sa.Column("sp", sa.BigInteger(), nullable=False),
        sa.Column("value", sa.String(length=255), nullable=False),
        sa.Column("exact", sa.Text(), nullable=False),
    )
    with op.batch_alter_table("idx_string", schema=None) as batch_op:
        batch_op.create_index("ix_string_rid", ["rid"], unique=False)
        batch_op.create_index("ix_string_sp_value", ["sp", "value"], unique=False)

    op.create_table(
        "idx_token",
        sa.Column("rid", sa.BigInteger(), nullable=False),
        sa.Column("sp", sa.BigInteger(), nullable=False),
        sa.Column("system", sa.Text(), nullable=True),
        sa.Column("code", sa.Text(), nullable=True),
        sa.Column("text", sa.String(length=255), nullable=True),
        sa.Column("h_code", sa.BigInteger(), nullable=False),
        sa.Column("h_sys_code", sa.BigInteger(), nullable=False),
        sa.Column("h_sys", sa.BigInteger(), nullable=False),
    )
    with op.batch_alter_table("idx_token", schema=None) as batch_op:
        batch_op.create_index("ix_token_h_code", ["h_code"], unique=False)
        batch_op.create_index("ix_token_h_sys", ["h_sys"], unique=False)
        batch_op.create_index("ix_token_h_sys_code", ["h_sys_code"], unique=False)
        batch_op.create_index("ix_token_rid", ["rid"], unique=False)

    op.create_table(
        "idx_uri",
        sa.Column("rid", sa.BigInteger(), nullable=False),
        sa.Column("sp", sa.BigInteger(), nullable=False),
        sa.Column("uri", sa.Text(), nullable=False),
    )
    with op.batch_alter_table("idx_uri", schema=None) as batch_op:
        batch_op.create_index("ix_uri_rid", ["rid"], unique=False)
        batch_op.create_index("ix_uri_sp_uri", ["sp", "uri"], unique=False)

    op.create_table(
        "resource_history",
        sa.Column("rid", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("version", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("res_type", sa.String(length=64), nullable=False),
        sa.Column("res_id", sa.String(length=64), nullable=False),
        sa.Column("updated_us", sa.BigInteger(), nullable=False),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.Column("method", sa.String(length=8), nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=True),
        sa.PrimaryKeyConstraint("rid", "version"),
    )
    with op.batch_alter_table("resource_history", schema=None) as batch_op:
        batch_op.create_index("ix_history_type_updated", ["res_type", "updated_us"], unique=False)
        batch_op.create_index("ix_history_updated", ["updated_us"], unique=False)

    op.create_table(
        "resources",
        sa.Column(
            "rid",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            sa.Sequence("resources_rid_seq"),
            nullable=False,
        ),
        sa.Column("res_type", sa.String(length=64), nullable=False),
        sa.Column("res_id", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("updated_us", sa.BigInteger(), nullable=False),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.Column("method", sa.String(length=8), nullable=False),
        sa.Column("idx_mask", sa.Integer(), nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=True),
        sa.PrimaryKeyConstraint("rid"),
    )
    with op.batch_alter_table("resources", schema=None) as batch_op:
        batch_op.create_index("ix_resources_type_updated", ["res_type", "updated_us"], unique=False)
        batch_op.create_index("ix_resources_updated", ["updated_us"], unique=False)
        batch_op.create_index("ux_resources_type_id", ["res_type", "res_id"], unique=True)


def downgrade() -> None:
    with op.batch_alter_table("resources", schema=None) as batch_op:
        batch_op.drop_index("ux_resources_type_id")
        batch_op.drop_index("ix_resources_updated")
        batch_op.drop_index("ix_resources_type_updated")

    op.drop_table("resources")
    with op.batch_alter_table("resource_history", schema=None) as batch_op:
        batch_op.drop_index("ix_history_updated")
        batch_op.drop_index("ix_history_type_updated")

    op.drop_table("resource_history")
    with op.batch_alter_table("idx_uri", schema=None) as batch_op:
        batch_op.drop_index("ix_uri_sp_uri")
        batch_op.drop_index("ix_uri_rid")

    op.drop_table("idx_uri")
    with op.batch_alter_table("idx_token", schema=None) as batch_op:
        batch_op.drop_index("ix_token_rid")
        batch_op.drop_index("ix_token_h_sys_code")
        batch_op.drop_index("ix_token_h_sys")
        batch_op.drop_index("ix_token_h_code")

    op.drop_table("idx_token")
    with op.batch_alter_table("idx_string", schema=None) as batch_op:
        batch_op.drop_index("ix_string_sp_value")
        batch_op.drop_index("ix_string_rid")

    op.drop_table("idx_string")
    with op.batch_alter_table("idx_reference", schema=None) as batch_op:
        batch_op.drop_index("ix_reference_url")
        batch_op.drop_index("ix_reference_target")
        batch_op.drop_index("ix_reference_rid")

    op.drop_table("idx_reference")
    with op.batch_alter_table("idx_quantity", schema=None) as batch_op:
        batch_op.drop_index("ix_quantity_sp_lo")
        batch_op.drop_index("ix_quantity_rid")

    op.drop_table("idx_quantity")
    with op.batch_alter_table("idx_number", schema=None) as batch_op:
        batch_op.drop_index("ix_number_sp_lo")
        batch_op.drop_index("ix_number_rid")

    op.drop_table("idx_number")
    with op.batch_alter_table("idx_date", schema=None) as batch_op:
        batch_op.drop_index("ix_date_sp_lo_hi")
        batch_op.drop_index("ix_date_rid")

    op.drop_table("idx_date")
    if op.get_bind().dialect.name == "postgresql":
        op.execute(sa.schema.DropSequence(sa.Sequence("resources_rid_seq")))
