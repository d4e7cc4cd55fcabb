"""users: refresh tokens (rotated, reuse revokes the family) and key activation times.

Revision ID: users_0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "users_0003"
down_revision = "users_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "refresh_tokens",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("family", sa.String(32), nullable=False, index=True),
        sa.Column("user_id", sa.String(32), nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
        sa.Column("used_at", sa.Float),
        sa.Column("revoked", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.add_column("signing_keys", sa.Column("activates_at", sa.Float))


def downgrade() -> None:
    op.drop_column("signing_keys", "activates_at")
    op.drop_table("refresh_tokens")
