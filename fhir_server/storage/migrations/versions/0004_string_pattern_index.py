"""String index with pattern operators, so prefix searches use it under any collation.

PostgreSQL only uses a plain b-tree index for ``LIKE 'abc%'`` when the database collation is
``C``; ``varchar_pattern_ops`` makes it usable everywhere. SQLite ignores operator classes.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22 03:35:00.000000
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.drop_index("ix_string_sp_value", table_name="idx_string")
    op.create_index(
        "ix_string_sp_value", "idx_string", ["sp", "value"], postgresql_ops={"value": "varchar_pattern_ops"}
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.drop_index("ix_string_sp_value", table_name="idx_string")
    op.create_index("ix_string_sp_value", "idx_string", ["sp", "value"])
