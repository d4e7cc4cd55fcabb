"""shipping: the transactional outbox.

Revision ID: shipping_0002
"""

from __future__ import annotations

from alembic import op

from meshop.mesh import create_outbox_table

revision = "shipping_0002"
down_revision = "shipping_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_outbox_table(op)


def downgrade() -> None:
    op.drop_table("outbox")
