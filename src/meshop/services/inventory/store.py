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


async def reservation(conn: Conn, reservation_id: str, *, for_update: bool = False) -> Reservation | None:
    """The reservation; `for_update` locks its row until the transaction ends (PostgreSQL:
    two concurrent commits of one reservation must not both see it RESERVED)."""
    query = sa.select(reservations).where(reservations.c.id == reservation_id)
    if for_update:
        query = query.with_for_update()
    row = (await conn.execute(query)).first()
    return to_reservation(row) if row else None


async def stock_of(conn: Conn, skus: list[str], *, for_update: bool = False) -> dict[str, Any]:
    query = sa.select(stock).where(stock.c.sku.in_(skus)).order_by(stock.c.sku)
    if for_update:  # PostgreSQL row locks; SQLite's writer lock already serialises
        query = query.with_for_update()
    rows = await conn.execute(query)
    return {r.sku: r for r in rows}


async def adjust(conn: Conn, sku: str, *, available: int = 0, reserved: int = 0, committed: int = 0) -> None:
    await conn.execute(
        stock.update()
        .where(stock.c.sku == sku)
        .values(
            available=stock.c.available + available,
            reserved=stock.c.reserved + reserved,
            committed=stock.c.committed + committed,
        )
    )


async def save(conn: Conn, r: Reservation, updated_at: str, *, new: bool) -> None:
    values = {
        "order_id": r.order_id,
        "status": r.status,
        "items": msgspec.json.encode(r.items).decode(),
        "reason": r.reason,
        "updated_at": updated_at,
    }
    if new:
        await conn.execute(reservations.insert().values(id=r.id, **values))
    else:
        await conn.execute(reservations.update().where(reservations.c.id == r.id).values(**values))


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
