"""Inventory's events: a reservation's stock reserved, released or committed. It consumes none."""

from __future__ import annotations

from meshop.contracts.inventory import (
    STOCK_COMMITTED,
    STOCK_RELEASED,
    STOCK_RESERVED,
    Reservation,
    StockCommitted,
    StockReleased,
    StockReserved,
)
from meshop.mesh import Conn, emit


async def stock_reserved(conn: Conn, reservation: Reservation) -> None:
    data = StockReserved(reservation_id=reservation.id, order_id=reservation.order_id, items=reservation.items)
    await emit(conn, STOCK_RESERVED, data)


async def stock_released(conn: Conn, reservation: Reservation) -> None:
    data = StockReleased(reservation_id=reservation.id, order_id=reservation.order_id, items=reservation.items)
    await emit(conn, STOCK_RELEASED, data)


async def stock_committed(conn: Conn, reservation: Reservation) -> None:
    data = StockCommitted(reservation_id=reservation.id, order_id=reservation.order_id, items=reservation.items)
    await emit(conn, STOCK_COMMITTED, data)
