"""The inventory database: stock per SKU and reservations keyed by idempotency key."""

from __future__ import annotations

from typing import Any

import msgspec
import sqlalchemy as sa

from meshop.contracts.inventory import AdminReservation, AdminStock, Reservation, ReservedLine
from meshop.mesh import Conn

metadata = sa.MetaData()

stock = sa.Table(
    "stock",
    metadata,
    sa.Column("sku", sa.String(40), primary_key=True),
    sa.Column("available", sa.Integer, nullable=False),
    sa.Column("reserved", sa.Integer, nullable=False),
    sa.Column("committed", sa.Integer, nullable=False),
)

reservations = sa.Table(
    "reservations",
    metadata,
    sa.Column("id", sa.String(200), primary_key=True),
    sa.Column("order_id", sa.String(64), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("items", sa.Text, nullable=False),
    sa.Column("reason", sa.String(200)),
    sa.Column("updated_at", sa.String(40), nullable=False),
)

_lines = msgspec.json.Decoder(list[ReservedLine])


def to_reservation(row: Any) -> Reservation:
    return Reservation(
        id=row.id, order_id=row.order_id, status=row.status, items=_lines.decode(row.items), reason=row.reason
    )


# The statements a checkout runs, built once (docs/decisions/0032): their values are
# parameters, so SQLAlchemy neither coerces arguments nor generates a cache key per call.
# `b_`: bound in WHERE or in an expression, never a column of the SET clause.
_RESERVATION = sa.select(reservations).where(reservations.c.id == sa.bindparam("b_id"))
_RESERVATION_FOR_UPDATE = _RESERVATION.with_for_update()
_STOCK = sa.select(stock).where(stock.c.sku.in_(sa.bindparam("b_skus", expanding=True))).order_by(stock.c.sku)
_STOCK_FOR_UPDATE = _STOCK.with_for_update()
_ADJUST = (
    stock.update()
    .where(stock.c.sku == sa.bindparam("b_sku"))
    .values(
        available=stock.c.available + sa.bindparam("b_available", type_=sa.Integer),
        reserved=stock.c.reserved + sa.bindparam("b_reserved", type_=sa.Integer),
        committed=stock.c.committed + sa.bindparam("b_committed", type_=sa.Integer),
    )
)
_INSERT_RESERVATION = reservations.insert()
_UPDATE_RESERVATION = reservations.update().where(reservations.c.id == sa.bindparam("b_id"))


async def reservation(conn: Conn, reservation_id: str, *, for_update: bool = False) -> Reservation | None:
    """The reservation; `for_update` locks its row until the transaction ends (PostgreSQL:
    two concurrent commits of one reservation must not both see it RESERVED)."""
    query = _RESERVATION_FOR_UPDATE if for_update else _RESERVATION
    row = (await conn.execute(query, {"b_id": reservation_id})).first()
    return to_reservation(row) if row else None


async def stock_of(conn: Conn, skus: list[str], *, for_update: bool = False) -> dict[str, Any]:
    # for_update: PostgreSQL row locks; SQLite's writer lock already serialises
    rows = await conn.execute(_STOCK_FOR_UPDATE if for_update else _STOCK, {"b_skus": skus})
    return {r.sku: r for r in rows}


async def adjust(conn: Conn, sku: str, *, available: int = 0, reserved: int = 0, committed: int = 0) -> None:
    params = {"b_sku": sku, "b_available": available, "b_reserved": reserved, "b_committed": committed}
    await conn.execute(_ADJUST, params)


async def save(conn: Conn, r: Reservation, updated_at: str, *, new: bool) -> None:
    values = {
        "order_id": r.order_id,
        "status": r.status,
        "items": msgspec.json.encode(r.items).decode(),
        "reason": r.reason,
        "updated_at": updated_at,
    }
    if new:
        await conn.execute(_INSERT_RESERVATION, {"id": r.id, **values})
    else:
        await conn.execute(_UPDATE_RESERVATION, {**values, "b_id": r.id})


def to_admin_stock(row: Any) -> AdminStock:
    return AdminStock(sku=row.sku, available=row.available, reserved=row.reserved, committed=row.committed)


def to_admin_reservation(row: Any) -> AdminReservation:
    return AdminReservation(order_id=row.order_id, status=row.status, items=to_reservation(row).items)


async def count(conn: Conn) -> int:
    """How many SKUs have a stock record."""
    return int(await conn.scalar(sa.select(sa.func.count()).select_from(stock)) or 0)


async def add_sku(conn: Conn, sku: str) -> None:
    """A stock record for `sku` (none of it yet), unless it has one."""
    if sku not in await stock_of(conn, [sku]):
        await conn.execute(stock.insert().values(sku=sku, available=0, reserved=0, committed=0))
