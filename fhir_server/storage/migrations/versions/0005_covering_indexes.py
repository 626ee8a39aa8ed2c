"""Covering indexes for searches that go from index tables to resources.

Token lookups carry ``rid`` (the resources of a code come from the index alone), and on
PostgreSQL ``resources`` gets an index on ``rid`` that includes type and liveness, so a chain
can check thousands of referring rows without reading the heap (search benchmark, chain query).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22 04:05:00.000000
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for name, column in (("ix_token_h_code", "h_code"), ("ix_token_h_sys_code", "h_sys_code")):
        op.drop_index(name, table_name="idx_token")
        op.create_index(name, "idx_token", [column, "rid"])
    if op.get_bind().dialect.name == "postgresql":
        op.create_index("ix_resources_live", "resources", ["rid"], postgresql_include=["res_type", "deleted"])


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.drop_index("ix_resources_live", table_name="resources")
    for name, column in (("ix_token_h_code", "h_code"), ("ix_token_h_sys_code", "h_sys_code")):
        op.drop_index(name, table_name="idx_token")
        op.create_index(name, "idx_token", [column])
