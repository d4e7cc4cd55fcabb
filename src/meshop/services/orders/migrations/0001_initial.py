"""orders: orders and the checkout sagas.

Revision ID: orders_0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from meshop.mesh import create_saga_table

revision = "orders_0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "orders",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("user_id", sa.String(64), nullable=False),
        sa.Column("idempotency_key", sa.String(200), nullable=False),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("items", sa.Text, nullable=False),
        sa.Column("total_cents", sa.BigInteger, nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("payment_status", sa.String(16)),
        sa.Column("tracking_number", sa.String(40)),
        sa.Column("carrier", sa.String(40)),
        sa.Column("cancel_reason", sa.String(40)),
        sa.Column("history", sa.Text, nullable=False),
        sa.Column("created_at", sa.String(40), nullable=False),
        sa.UniqueConstraint("user_id", "idempotency_key", name="uq_orders_user_key"),
    )
    op.create_index("ix_orders_user", "orders", ["user_id", "created_at"])
    create_saga_table(op)


def downgrade() -> None:
    op.drop_table("sagas")
    op.drop_table("orders")
