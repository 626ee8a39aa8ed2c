"""The append-only audit store (fhir_server/audit/store.py).

Why a table of its own rather than AuditEvent resources: the FHIR API must not be able to change
audit records (only the store appends), every record is chained to the one before by a hash so
that tampering with the table shows, and one row per event with the ITI-81 search columns costs
far less to write than a resource with ~20 search-index rows — audit is written on every request.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-22 07:50:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

ZERO = "0" * 64


def upgrade() -> None:
    op.create_table(
        "audit_events",
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=False, nullable=False),
        sa.Column("recorded_us", sa.BigInteger(), nullable=False),
        sa.Column("type_code", sa.String(length=64), nullable=False),
        sa.Column("subtype_code", sa.String(length=64), nullable=True),
        sa.Column("action", sa.String(length=1), nullable=True),
        sa.Column("outcome", sa.String(length=2), nullable=False),
        sa.Column("patient", sa.String(length=128), nullable=True),
        sa.Column("agent", sa.String(length=256), nullable=True),
        sa.Column("address", sa.String(length=64), nullable=True),
        sa.Column("entity", sa.String(length=256), nullable=True),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
    )
    op.create_index("ix_audit_events_recorded", "audit_events", ["recorded_us"])
    op.create_index("ix_audit_events_patient", "audit_events", ["patient", "recorded_us"])
    op.create_index("ix_audit_events_agent", "audit_events", ["agent", "recorded_us"])
    anchor = op.create_table(
        "audit_anchor",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.Column("purged_us", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.bulk_insert(anchor, [{"id": 1, "seq": 0, "hash": ZERO, "purged_us": None}])


def downgrade() -> None:
    op.drop_table("audit_anchor")
    for name in ("ix_audit_events_agent", "ix_audit_events_patient", "ix_audit_events_recorded"):
        op.drop_index(name, table_name="audit_events")
    op.drop_table("audit_events")
