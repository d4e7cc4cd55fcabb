"""The catalog database: products."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from meshop.mesh import Conn

metadata = sa.MetaData()

products = sa.Table(
    "products",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("sku", sa.String(40), nullable=False, unique=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("price_cents", sa.BigInteger, nullable=False),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("category", sa.String(60), nullable=False),
    sa.Column("search_text", sa.Text, nullable=False),
)


async def page(
    conn: Conn, *, words: list[str], category: str | None, after: str | None, limit: int
) -> list[dict[str, Any]]:
    """Products after `after` (by id) whose search text contains every one of `words`."""
    query = sa.select(products).order_by(products.c.id).limit(limit)
    if after:
        query = query.where(products.c.id > after)
    if category:
        query = query.where(products.c.category == category)
    for word in words:
        escaped = word.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        query = query.where(products.c.search_text.like(f"%{escaped}%", escape="\\"))
    return [dict(r) for r in (await conn.execute(query)).mappings()]


async def by_id(conn: Conn, product_id: str) -> dict[str, Any] | None:
    row = (await conn.execute(sa.select(products).where(products.c.id == product_id))).mappings().first()
    return dict(row) if row else None


async def by_skus(conn: Conn, skus: list[str]) -> list[dict[str, Any]]:
    rows = await conn.execute(sa.select(products).where(products.c.sku.in_(skus)))
    return [dict(r) for r in rows.mappings()]


async def count(conn: Conn) -> int:
    return int(await conn.scalar(sa.select(sa.func.count()).select_from(products)) or 0)


async def insert(conn: Conn, row: dict[str, Any]) -> None:
    await conn.execute(products.insert().values(**row))


async def change(conn: Conn, product_id: str, values: dict[str, Any]) -> None:
    await conn.execute(products.update().where(products.c.id == product_id).values(**values))
