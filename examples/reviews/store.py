"""The reviews database: reviews, and the purchases its consumer learns from orders' events."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from meshop.mesh import Conn
from reviews.contract import Review

metadata = sa.MetaData()

reviews = sa.Table(
    "reviews",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("product_id", sa.String(64), nullable=False),
    sa.Column("sku", sa.String(40), nullable=False),
    sa.Column("user_id", sa.String(64), nullable=False),
    sa.Column("rating", sa.Integer, nullable=False),
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("verified_purchase", sa.Boolean, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("created_at", sa.String(40), nullable=False),
)

purchases = sa.Table(
    "purchases",
    metadata,
    sa.Column("order_id", sa.String(64), primary_key=True),
    sa.Column("sku", sa.String(40), primary_key=True),
    sa.Column("user_id", sa.String(64), nullable=False),
    sa.Column("confirmed", sa.Boolean, nullable=False),
)


def to_review(row: Any) -> Review:
    return Review(
        id=row.id,
        product_id=row.product_id,
        sku=row.sku,
        user_id=row.user_id,
        rating=row.rating,
        text=row.text,
        verified_purchase=bool(row.verified_purchase),
        status=row.status,
        created_at=row.created_at,
    )


async def insert(conn: Conn, review: Review) -> None:
    await conn.execute(reviews.insert().values(**_values(review)))


def _values(review: Review) -> dict[str, Any]:
    return {name: getattr(review, name) for name in reviews.c.keys()}  # noqa: SIM118 (a Table's columns)


async def find(conn: Conn, review_id: str) -> Review | None:
    row = (await conn.execute(sa.select(reviews).where(reviews.c.id == review_id))).first()
    return to_review(row) if row else None


async def find_by_author(conn: Conn, sku: str, user_id: str) -> Review | None:
    query = sa.select(reviews).where(reviews.c.sku == sku, reviews.c.user_id == user_id)
    row = (await conn.execute(query)).first()
    return to_review(row) if row else None


async def set_status(conn: Conn, review_id: str, status: str) -> None:
    await conn.execute(reviews.update().where(reviews.c.id == review_id).values(status=status))


async def published(conn: Conn, product_id: str, *, after: str | None, limit: int) -> list[Review]:
    """Up to `limit` published reviews of a product in id order (oldest first), after id `after`."""
    query = sa.select(reviews).where(reviews.c.product_id == product_id, reviews.c.status == "PUBLISHED")
    if after is not None:
        query = query.where(reviews.c.id > after)
    rows = await conn.execute(query.order_by(reviews.c.id).limit(limit))
    return [to_review(r) for r in rows]


async def add_purchase(conn: Conn, order_id: str, user_id: str, skus: set[str]) -> None:
    """Remember an order's products, not yet confirmed (the inbox applies an event once)."""
    if skus:
        rows = [{"order_id": order_id, "sku": sku, "user_id": user_id, "confirmed": False} for sku in sorted(skus)]
        await conn.execute(purchases.insert(), rows)


async def confirm_purchase(conn: Conn, order_id: str) -> list[tuple[str, str]]:
    """Mark an order's products bought; the (user_id, sku) pairs it covered."""
    await conn.execute(purchases.update().where(purchases.c.order_id == order_id).values(confirmed=True))
    rows = await conn.execute(sa.select(purchases.c.user_id, purchases.c.sku).where(purchases.c.order_id == order_id))
    return [(r.user_id, r.sku) for r in rows]


async def has_bought(conn: Conn, user_id: str, sku: str) -> bool:
    query = sa.select(purchases.c.sku).where(
        purchases.c.user_id == user_id, purchases.c.sku == sku, purchases.c.confirmed.is_(True)
    )
    return (await conn.execute(query.limit(1))).first() is not None


async def mark_verified(conn: Conn, user_id: str, sku: str) -> None:
    query = reviews.update().where(reviews.c.user_id == user_id, reviews.c.sku == sku)
    await conn.execute(query.values(verified_purchase=True))


async def clear_purchases(conn: Conn) -> None:
    await conn.execute(purchases.delete())
    await conn.execute(reviews.update().values(verified_purchase=False))
