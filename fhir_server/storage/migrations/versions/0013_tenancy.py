"""Tenancy: each resource's owner, patient, data category and security labels; access grants.

Why columns on ``resources``: access control is a SQL filter (ARCHITECTURE.md), so what it
decides on must be in the row that every search, include, chain and history query already reads
(security/tenancy.py). ``access_grants`` holds who may see another institution's data about a
patient, derived from requests and consents (security/grants.py). An audit record names the
requester's institution, whose audit trail it belongs to (rest/interactions/audit_events.py).
``auth_launches`` holds SMART EHR launch contexts (security/launch.py), ``export_ledger`` the
ledger of data sent abroad (rest/operations/export_abroad.py); ``auth_clients.tls_subject`` the
certificate subject of a client that authenticates with mutual TLS (RFC 8705).

Rows stored before this revision get category 0, which no filter admits but the platform's own
access; ``fhir-server db upgrade`` computes their columns after the schema change
(security/backfill.py).

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07 10:30:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("resources", sa.Column("tenant", sa.String(64), nullable=True))
    op.add_column("resources", sa.Column("patient", sa.String(64), nullable=True))
    op.add_column("resources", sa.Column("category", sa.Integer(), nullable=False, server_default="0"))
    op.add_column("resources", sa.Column("labels", sa.Integer(), nullable=False, server_default="0"))
    op.add_column("resources", sa.Column("minor_until_us", sa.BigInteger(), nullable=True))
    op.create_table(
        "access_grants",
        sa.Column("grantee", sa.String(64), nullable=False),
        sa.Column("patient", sa.String(64), nullable=False),
        sa.Column("grantor", sa.String(64), nullable=False),
        sa.Column("categories", sa.Integer(), nullable=False),
        sa.Column("labels", sa.Integer(), nullable=False),
        sa.Column("start_us", sa.BigInteger(), nullable=False),
        sa.Column("end_us", sa.BigInteger(), nullable=False),
        sa.Column("since_us", sa.BigInteger(), nullable=False),
        sa.Column("source", sa.String(200), nullable=False),
    )
    op.create_index("ix_access_grants_lookup", "access_grants", ["grantee", "patient", "grantor"])
    op.create_index("ix_access_grants_patient", "access_grants", ["patient"])
    op.add_column("audit_events", sa.Column("organization", sa.String(128), nullable=True))
    op.create_table(
        "auth_launches",
        sa.Column("launch_hash", sa.String(64), primary_key=True),
        sa.Column("username", sa.String(128), nullable=False),
        sa.Column("context", sa.Text(), nullable=False),
        sa.Column("expires_us", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_audit_events_organization", "audit_events", ["organization", "recorded_us"])

    op.create_table(
        "export_ledger",
        sa.Column("export_id", sa.String(64), primary_key=True),
        sa.Column("recorded_us", sa.BigInteger(), nullable=False),
        sa.Column("organization", sa.String(128), nullable=True),
        sa.Column("requester", sa.String(256), nullable=False),
        sa.Column("recipient", sa.Text(), nullable=False),
        sa.Column("country", sa.String(8), nullable=False),
        sa.Column("purpose", sa.Text(), nullable=False),
        sa.Column("assessment", sa.Text(), nullable=False),
        sa.Column("measures", sa.Text(), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("patients", sa.Integer(), nullable=False),
        sa.Column("resources", sa.Integer(), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
    )
    op.create_index("ix_export_ledger_organization", "export_ledger", ["organization", "recorded_us"])
    op.create_index("ix_export_ledger_recorded", "export_ledger", ["recorded_us"])
    op.add_column("auth_clients", sa.Column("tls_subject", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("auth_clients") as batch:
        batch.drop_column("tls_subject")
    op.drop_table("export_ledger")
    op.drop_table("auth_launches")
    op.drop_index("ix_audit_events_organization", "audit_events")
    with op.batch_alter_table("audit_events") as batch:
        batch.drop_column("organization")
    op.drop_table("access_grants")
    with op.batch_alter_table("resources") as batch:
        for column in ("minor_until_us", "labels", "category", "patient", "tenant"):
            batch.drop_column(column)
