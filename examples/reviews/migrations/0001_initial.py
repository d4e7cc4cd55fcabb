"""reviews: reviews, and the purchases that make a review a verified one.

Revision ID: reviews_0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "reviews_0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "reviews",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("product_id", sa.String(64), nullable=False),
        sa.Column("sku", sa.String(40), nullable=False),
        sa.Column("user_id", sa.String(64), nullable=False),
        sa.Column("rating", sa.Integer, nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("verified_purchase", sa.Boolean, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", sa.String(40), nullable=False),
        sa.CheckConstraint("rating BETWEEN 1 AND 5", name="reviews_rating"),
        # The domain's rule "one review per customer and product", kept by the database too.
        sa.UniqueConstraint("sku", "user_id", name="reviews_one_per_customer"),
    )
    op.create_index("ix_reviews_product", "reviews", ["product_id", "id"])
    op.create_table(
        "purchases",
        sa.Column("order_id", sa.String(64), primary_key=True),
        sa.Column("sku", sa.String(40), primary_key=True),
        sa.Column("user_id", sa.String(64), nullable=False),
        sa.Column("confirmed", sa.Boolean, nullable=False),
    )
    op.create_index("ix_purchases_user_sku", "purchases", ["user_id", "sku"])


def downgrade() -> None:
    op.drop_table("purchases")
    op.drop_table("reviews")
