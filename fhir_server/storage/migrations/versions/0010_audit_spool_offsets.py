"""Spool offsets of the audit writer (fhir_server/audit/writer.py).

Why: the writer appends a worker's spooled audit events and records how far it has read, in the
same transaction, so a crash at any point neither loses nor repeats a record; and on
PostgreSQL the audit column is compressed with lz4, several times cheaper than the default pglz
for the ~2 KB JSON written on every request.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-22 08:10:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_spool_offsets",
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("offset", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        lz4 = bind.exec_driver_sql("SELECT 1 FROM pg_settings WHERE name = 'default_toast_compression' "
                                   "AND 'lz4' = ANY(enumvals)").first()  # fmt: skip
        if lz4 is not None:  # PostgreSQL built with lz4 (14+)
            op.execute("ALTER TABLE audit_events ALTER COLUMN content SET COMPRESSION lz4")


def downgrade() -> None:
    op.drop_table("audit_spool_offsets")
