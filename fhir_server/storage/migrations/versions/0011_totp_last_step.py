"""The TOTP step of each account's last accepted code (fhir_server/security/users.py).

Why in the table: a one-time code must work once (RFC 6238 §5.2); kept in one process's memory,
a code seen in transit could be replayed against another worker within its ±1 step window.
The step is claimed with a conditional UPDATE, so two workers cannot both accept one code.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-22 08:40:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("auth_users", sa.Column("totp_last_step", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("auth_users") as batch:
        batch.drop_column("totp_last_step")
