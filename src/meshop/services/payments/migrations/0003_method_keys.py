"""payments: a payment method remembers the idempotency key it was stored under.

A tokenize sent again with the same key (a retry after a timeout, on any replica) returns
the method the first one stored instead of storing the card twice. Methods stored before
this revision have no key.

Revision ID: payments_0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "payments_0003"
down_revision = "payments_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("payment_methods", sa.Column("idempotency_key", sa.String(200), nullable=True))
    op.create_index("payment_methods_idempotency_key", "payment_methods", ["idempotency_key"], unique=True)


def downgrade() -> None:
    op.drop_index("payment_methods_idempotency_key", table_name="payment_methods")
    op.drop_column("payment_methods", "idempotency_key")
