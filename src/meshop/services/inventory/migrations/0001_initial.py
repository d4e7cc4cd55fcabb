"""inventory: stock and reservations.

Revision ID: inventory_0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "inventory_0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "stock",
        sa.Column("sku", sa.String(40), primary_key=True),
        sa.Column("available", sa.Integer, nullable=False),
        sa.Column("reserved", sa.Integer, nullable=False),
        sa.Column("committed", sa.Integer, nullable=False),
        sa.CheckConstraint("available >= 0 AND reserved >= 0 AND committed >= 0", name="stock_not_negative"),
    )
    op.create_table(
        "reservations",
        sa.Column("id", sa.String(200), primary_key=True),
        sa.Column("order_id", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("items", sa.Text, nullable=False),
        sa.Column("reason", sa.String(200)),
        sa.Column("updated_at", sa.String(40), nullable=False),
    )
    op.create_index("ix_reservations_order", "reservations", ["order_id"])


def downgrade() -> None:
    op.drop_table("reservations")
    op.drop_table("stock")
