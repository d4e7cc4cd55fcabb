"""The payments database: tokenized payment methods and payments."""

from __future__ import annotations

from collections.abc import Mapping
from types import SimpleNamespace
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


# The statements a checkout runs, built once (docs/decisions/0032): their values are
# parameters, so SQLAlchemy neither coerces arguments nor generates a cache key per call.
# `b_`: bound in WHERE, never a column of the SET clause.
_METHOD = sa.select(payment_methods).where(payment_methods.c.token == sa.bindparam("b_token"))
_BY_KEY = sa.select(payments).where(payments.c.idempotency_key == sa.bindparam("b_key"))
_BY_ID = sa.select(payments).where(payments.c.id == sa.bindparam("b_id"))
_MOVE = payments.update().where(payments.c.id == sa.bindparam("b_id"), payments.c.status == sa.bindparam("b_expected"))
_INSERT_METHOD = payment_methods.insert()
_INSERT = payments.insert()


async def method(conn: Conn, token: str) -> Any:
    return (await conn.execute(_METHOD, {"b_token": token})).first()


async def method_by_key(conn: Conn, key: str) -> Any:
    return (await conn.execute(sa.select(payment_methods).where(payment_methods.c.idempotency_key == key))).first()


async def by_key(conn: Conn, key: str) -> Any:
    return (await conn.execute(_BY_KEY, {"b_key": key})).first()


async def by_id(conn: Conn, payment_id: str) -> Any:
    return (await conn.execute(_BY_ID, {"b_id": payment_id})).first()


async def set_status(conn: Conn, payment_id: str, status: str, updated_at: str, *, expected: str) -> bool:
    """Move the payment from `expected` to `status`; False if another request moved it first."""
    params = {"status": status, "updated_at": updated_at, "b_id": payment_id, "b_expected": expected}
    result = await conn.execute(_MOVE, params)
    return bool(result.rowcount == 1)


def written(values: Mapping[str, Any]) -> Any:
    """A payment's row as this transaction wrote it (`values`: every column), without reading it back."""
    return SimpleNamespace(**values)


async def insert_method(conn: Conn, row: dict[str, Any]) -> None:
    await conn.execute(_INSERT_METHOD, row)


async def insert(conn: Conn, row: dict[str, Any]) -> None:
    await conn.execute(_INSERT, row)
