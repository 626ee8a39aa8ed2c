"""Concept tables of stored CodeSystems (terminology/table.py).

Why tables and not the resource: a CodeSystem such as LOINC (100,000 concepts, 17 MB of JSON)
parsed into memory takes ~140 MB more per worker and 1.5-2 s on first use; the terminology
operations need one concept, its neighbours in the hierarchy, or a filtered page of displays,
which indexed rows answer in milliseconds. CodeSystems stored before this revision have no rows
and are read from their content as before.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-22 06:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "terminology_systems",
        sa.Column("cs_id", sa.String(length=64), nullable=False),
        sa.Column("cs_version", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("business_version", sa.Text(), nullable=True),
        sa.Column("header", sa.Text(), nullable=False),
        sa.Column("concepts", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("cs_id", "cs_version"),
    )
    op.create_index("ix_terminology_systems_url", "terminology_systems", ["url"])
    op.create_table(
        "terminology_concepts",
        sa.Column("cs_id", sa.String(length=64), nullable=False),
        sa.Column("cs_version", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("code", sa.Text(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("display", sa.Text(), nullable=True),
        sa.Column("norm", sa.Text(), nullable=False),
        sa.Column("inactive", sa.Boolean(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("cs_id", "cs_version", "code"),
    )
    op.create_index("ix_terminology_concepts_seq", "terminology_concepts", ["cs_id", "cs_version", "seq"])
    op.create_table(
        "terminology_edges",
        sa.Column("cs_id", sa.String(length=64), nullable=False),
        sa.Column("cs_version", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("parent", sa.Text(), nullable=False),
        sa.Column("child", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("cs_id", "cs_version", "parent", "child"),
    )
    op.create_index("ix_terminology_edges_child", "terminology_edges", ["cs_id", "cs_version", "child"])


def downgrade() -> None:
    op.drop_index("ix_terminology_edges_child", table_name="terminology_edges")
    op.drop_table("terminology_edges")
    op.drop_index("ix_terminology_concepts_seq", table_name="terminology_concepts")
    op.drop_table("terminology_concepts")
    op.drop_index("ix_terminology_systems_url", table_name="terminology_systems")
    op.drop_table("terminology_systems")
