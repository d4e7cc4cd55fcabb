"""users: the order-statistics read model, fed by orders' events through an inbox.

Revision ID: users_0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from meshop.mesh import create_inbox_table

revision = "users_0002"
down_revision = "users_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_inbox_table(op)
    op.create_table(
        "order_stats",
        sa.Column("user_id", sa.String(32), primary_key=True),
        sa.Column("placed", sa.Integer, nullable=False),
        sa.Column("confirmed", sa.Integer, nullable=False),
        sa.Column("cancelled", sa.Integer, nullable=False),
        sa.Column("spent_cents", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("order_stats")
    op.drop_table("inbox")
