"""orders: the transactional outbox.

Revision ID: orders_0003
"""

from __future__ import annotations

from alembic import op

from meshop.mesh import create_outbox_table

revision = "orders_0003"
down_revision = "orders_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_outbox_table(op)


def downgrade() -> None:
    op.drop_table("outbox")
