"""Signing keys have a purpose: access tokens, or published documents.

Why two kinds: a token key is published only until the tokens it signed expire, but a signed
consultation report must stay verifiable for as long as it is kept (≥ 3 years, 001 §7): the keys
that sign documents are published for good (security/keys.py, workflow/documents.py).

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07 12:40:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("auth_signing_keys", sa.Column("purpose", sa.String(16), nullable=False, server_default="token"))


def downgrade() -> None:
    with op.batch_alter_table("auth_signing_keys") as batch:
        batch.drop_column("purpose")
