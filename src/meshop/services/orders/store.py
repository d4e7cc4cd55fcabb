"""The orders database: orders (and, through the mesh, the sagas that fulfil them)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec
import sqlalchemy as sa

from meshop.contracts.orders import (
    AdminOrder,
    AdminOrderLine,
    HistoryEntry,
    Order,
    PaymentInfo,
    PricedLine,
    ShipmentInfo,
)
from meshop.mesh import Conn, sagas

metadata = sa.MetaData()  # the sagas table is the mesh's (meshop.mesh.sagas)

orders = sa.Table(
    "orders",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("user_id", sa.String(64), nullable=False),
    sa.Column("idempotency_key", sa.String(200), nullable=False),
    sa.Column("request_hash", sa.String(64), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("items", sa.Text, nullable=False),
    sa.Column("total_cents", sa.BigInteger, nullable=False),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("payment_status", sa.String(16)),
    sa.Column("tracking_number", sa.String(40)),
    sa.Column("carrier", sa.String(40)),
    sa.Column("cancel_reason", sa.String(40)),
    sa.Column("history", sa.Text, nullable=False),
    sa.Column("created_at", sa.String(40), nullable=False),
    sa.UniqueConstraint("user_id", "idempotency_key", name="uq_orders_user_key"),
)

_items = msgspec.json.Decoder(list[PricedLine])
_history = msgspec.json.Decoder(list[HistoryEntry])


def now() -> str:
    return datetime.now(UTC).isoformat()


def to_order(row: Any) -> Order:
    return Order(
        id=row.id,
        status=row.status,
        items=_items.decode(row.items),
        total_cents=row.total_cents,
        currency=row.currency,
        payment=PaymentInfo(status=row.payment_status) if row.payment_status else None,
        shipment=ShipmentInfo(tracking_number=row.tracking_number, carrier=row.carrier)
        if row.tracking_number
        else None,
        cancel_reason=row.cancel_reason,
        history=_history.decode(row.history),
        created_at=row.created_at,
    )


# The statements every checkout runs, built once (docs/decisions/0032): their values are
# parameters, so SQLAlchemy neither coerces arguments nor generates a cache key per call.
# `b_`: bound in WHERE, never a column of the SET clause.
_BY_ID = sa.select(orders).where(orders.c.id == sa.bindparam("b_id"))
_BY_KEY = sa.select(orders).where(
    orders.c.user_id == sa.bindparam("b_user_id"), orders.c.idempotency_key == sa.bindparam("b_key")
)
_INSERT = orders.insert()
_UPDATE = orders.update().where(orders.c.id == sa.bindparam("b_id"))


async def by_id(conn: Conn, order_id: str) -> Any:
    return (await conn.execute(_BY_ID, {"b_id": order_id})).first()


async def by_key(conn: Conn, user_id: str, key: str) -> Any:
    return (await conn.execute(_BY_KEY, {"b_user_id": user_id, "b_key": key})).first()


async def of_user(conn: Conn, user_id: str, *, before: str | None, limit: int) -> list[Any]:
    query = (
        sa.select(orders)
        .where(orders.c.user_id == user_id)
        .order_by(orders.c.created_at.desc(), orders.c.id.desc())
        .limit(limit)
    )
    if before:
        query = query.where(orders.c.created_at < before)
    return list(await conn.execute(query))


def to_admin_order(row: Any) -> AdminOrder:
    return AdminOrder(
        id=row.id,
        user_id=row.user_id,
        status=row.status,
        total_cents=row.total_cents,
        cancel_reason=row.cancel_reason,
        items=[AdminOrderLine(sku=i.sku, quantity=i.quantity) for i in to_order(row).items],
    )


async def insert(conn: Conn, **values: Any) -> None:
    await conn.execute(_INSERT, values)


async def update(conn: Conn, order_id: str, values: dict[str, Any]) -> None:
    """Set `values` (column: value, at least one) on order `order_id`."""
    await conn.execute(_UPDATE, {**values, "b_id": order_id})


async def saga_counts(conn: Conn) -> list[tuple[str, str, int]]:
    """(saga name, status, how many) for every pair that has sagas."""
    query = sa.select(sagas.c.name, sagas.c.status, sa.func.count().label("n")).group_by(sagas.c.name, sagas.c.status)
    return [(row.name, row.status, int(row.n)) for row in await conn.execute(query)]
