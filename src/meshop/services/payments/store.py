"""The payments database: tokenized payment methods and payments."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from meshop.mesh import Conn

metadata = sa.MetaData()

payment_methods = sa.Table(
    "payment_methods",
    metadata,
    sa.Column("token", sa.String(64), primary_key=True),
    sa.Column("brand", sa.String(20), nullable=False),
    sa.Column("last4", sa.String(4), nullable=False),
    sa.Column("behaviour", sa.String(20), nullable=False),
    sa.Column("created_at", sa.String(40), nullable=False),
    sa.Column("idempotency_key", sa.String(200)),  # the tokenize's, when its caller sent one
    sa.Index("payment_methods_idempotency_key", "idempotency_key", unique=True),
)

payments = sa.Table(
    "payments",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("idempotency_key", sa.String(200), nullable=False, unique=True),
    sa.Column("order_id", sa.String(64), nullable=False),
    sa.Column("payment_method", sa.String(64), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("amount_cents", sa.BigInteger, nullable=False),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("provider", sa.String(20), nullable=False),
    sa.Column("provider_ref", sa.String(80), nullable=False),
    sa.Column("decline_reason", sa.String(80)),
    sa.Column("updated_at", sa.String(40), nullable=False),
)


async def method(conn: Conn, token: str) -> Any:
    return (await conn.execute(sa.select(payment_methods).where(payment_methods.c.token == token))).first()


async def method_by_key(conn: Conn, key: str) -> Any:
    return (await conn.execute(sa.select(payment_methods).where(payment_methods.c.idempotency_key == key))).first()


async def by_key(conn: Conn, key: str) -> Any:
    return (await conn.execute(sa.select(payments).where(payments.c.idempotency_key == key))).first()


async def by_id(conn: Conn, payment_id: str) -> Any:
    return (await conn.execute(sa.select(payments).where(payments.c.id == payment_id))).first()


async def set_status(conn: Conn, payment_id: str, status: str, updated_at: str, *, expected: str) -> bool:
    """Move the payment from `expected` to `status`; False if another request moved it first."""
    result = await conn.execute(
        payments.update()
        .where(payments.c.id == payment_id, payments.c.status == expected)
        .values(status=status, updated_at=updated_at)
    )
    return bool(result.rowcount == 1)


async def insert_method(conn: Conn, row: dict[str, Any]) -> None:
    await conn.execute(payment_methods.insert().values(**row))


async def insert(conn: Conn, row: dict[str, Any]) -> None:
    await conn.execute(payments.insert().values(**row))
