"""The orders' events: an order placed, then confirmed or cancelled. It consumes none."""

from __future__ import annotations

from meshop.contracts.orders import (
    ORDER_CANCELLED,
    ORDER_CONFIRMED,
    ORDER_PLACED,
    OrderCancelled,
    OrderConfirmed,
    OrderLine,
    OrderPlaced,
)
from meshop.mesh import Conn, emit


async def order_placed(conn: Conn, *, order_id: str, user_id: str, total_cents: int, items: list[OrderLine]) -> None:
    data = OrderPlaced(order_id=order_id, user_id=user_id, total_cents=total_cents, items=items)
    await emit(conn, ORDER_PLACED, data)


async def order_confirmed(conn: Conn, *, order_id: str, user_id: str, total_cents: int) -> None:
    await emit(conn, ORDER_CONFIRMED, OrderConfirmed(order_id=order_id, user_id=user_id, total_cents=total_cents))


async def order_cancelled(conn: Conn, *, order_id: str, user_id: str, total_cents: int, reason: str | None) -> None:
    data = OrderCancelled(order_id=order_id, user_id=user_id, total_cents=total_cents, cancel_reason=reason)
    await emit(conn, ORDER_CANCELLED, data)
