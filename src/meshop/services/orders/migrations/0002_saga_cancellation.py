"""orders: race-free cancellation of checkout sagas.

Revision ID: orders_0002
"""

from __future__ import annotations

from alembic import op

from meshop.mesh import add_saga_cancellation

revision = "orders_0002"
down_revision = "orders_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    add_saga_cancellation(op)


def downgrade() -> None:
    op.drop_column("sagas", "pivoted")
    op.drop_column("sagas", "cancel_requested")
