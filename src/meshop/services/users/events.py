"""Users' events: it emits none; it consumes the orders' events into each customer's order stats."""

from __future__ import annotations

from typing import Any

from meshop.contracts.orders import (
    ORDER_CANCELLED,
    ORDER_CONFIRMED,
    ORDER_PLACED,
    OrderCancelled,
    OrderConfirmed,
    OrderPlaced,
)
from meshop.mesh import Conn, Event, EventType
from meshop.services.users import domain, store

#: What the `order-stats` consumer reads.
ORDER_STATS_EVENTS: list[EventType[Any]] = [ORDER_PLACED, ORDER_CONFIRMED, ORDER_CANCELLED]


async def count_order_event(conn: Conn, event: Event[OrderPlaced | OrderConfirmed | OrderCancelled]) -> None:
    """Count an order event against its customer (the consumer's inbox makes it once)."""
    await store.add_order_stats(conn, event.data.user_id, **domain.order_stats_change(event.data))


async def reset_order_stats(conn: Conn) -> None:
    """Forget every count (a replay of the orders' stream rebuilds them)."""
    await store.clear_order_stats(conn)
