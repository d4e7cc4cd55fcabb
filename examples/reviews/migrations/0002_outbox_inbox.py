"""reviews: the transactional outbox (ReviewPosted) and the inbox of its consumer of orders' events.

Revision ID: reviews_0002
"""

from __future__ import annotations

from alembic import op

from meshop.mesh import create_inbox_table, create_outbox_table

revision = "reviews_0002"
down_revision = "reviews_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_outbox_table(op)
    create_inbox_table(op)


def downgrade() -> None:
    op.drop_table("inbox")
    op.drop_table("outbox")
