"""Reviews' events: it emits ReviewPosted; it consumes orders' OrderPlaced and OrderConfirmed
to know who bought what, which makes their reviews verified purchases."""

from __future__ import annotations

from typing import Any

from meshop.contracts.orders import ORDER_CONFIRMED, ORDER_PLACED, OrderConfirmed, OrderPlaced
from meshop.mesh import Conn, Event, EventType, emit
from reviews import store
from reviews.contract import REVIEW_POSTED, Review, ReviewPosted

#: What the `purchases` consumer reads (one source: orders' stream).
PURCHASE_EVENTS: list[EventType[Any]] = [ORDER_PLACED, ORDER_CONFIRMED]


async def review_posted(conn: Conn, review: Review) -> None:
    data = ReviewPosted(
        review_id=review.id,
        product_id=review.product_id,
        sku=review.sku,
        user_id=review.user_id,
        rating=review.rating,
        verified_purchase=review.verified_purchase,
    )
    await emit(conn, REVIEW_POSTED, data)


async def purchase_event(conn: Conn, event: Event[OrderPlaced | OrderConfirmed]) -> None:
    """An order placed: remember its products; confirmed: they are bought, and the customer's
    reviews of them are verified. Applied once per event (the consumer's inbox)."""
    data = event.data
    if isinstance(data, OrderPlaced):
        await store.add_purchase(conn, data.order_id, data.user_id, {line.sku for line in data.items})
        return
    for user_id, sku in await store.confirm_purchase(conn, data.order_id):
        await store.mark_verified(conn, user_id, sku)


async def reset_purchases(conn: Conn) -> None:
    """Forget every purchase (a replay of the orders' stream learns them again)."""
    await store.clear_purchases(conn)
