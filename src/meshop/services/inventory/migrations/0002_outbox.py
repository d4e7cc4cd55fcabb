"""inventory: the transactional outbox.

Revision ID: inventory_0002
"""

from __future__ import annotations

from alembic import op

from meshop.mesh import create_outbox_table

revision = "inventory_0002"
down_revision = "inventory_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_outbox_table(op)


def downgrade() -> None:
    op.drop_table("outbox")
