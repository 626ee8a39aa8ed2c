"""A client's request-signing secret (API key + HMAC signature, R24; fhir_server/security/signing.py).

Why encrypted, not hashed: verifying an HMAC needs the secret itself; it is stored encrypted with
AES-256-GCM under the field key ring (``security/crypto.py``), bound to the client's row.

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-22 08:50:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("auth_clients", sa.Column("signing_secret", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("auth_clients") as batch:
        batch.drop_column("signing_secret")
