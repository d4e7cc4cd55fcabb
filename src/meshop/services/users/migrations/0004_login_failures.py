"""users: failed logins per account and per client address, shared by every replica.

Revision ID: users_0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "users_0004"
down_revision = "users_0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "login_account_failures",
        sa.Column("account", sa.String(64), primary_key=True),
        sa.Column("failures", sa.Integer, nullable=False),
        sa.Column("last_failure_at", sa.Float, nullable=False, index=True),
    )
    op.create_table(
        "login_address_failures",
        sa.Column("address", sa.String(64), primary_key=True),
        sa.Column("recent", sa.Text, nullable=False),
        sa.Column("last_failure_at", sa.Float, nullable=False, index=True),
    )


def downgrade() -> None:
    op.drop_table("login_address_failures")
    op.drop_table("login_account_failures")
