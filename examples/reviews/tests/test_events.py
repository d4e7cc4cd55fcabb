"""Reviews' consumer of orders' events: a confirmed order makes its customer's reviews verified purchases."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from meshop.contracts.orders import (
    ORDER_CANCELLED,
    ORDER_CONFIRMED,
    ORDER_PLACED,
    OrderCancelled,
    OrderConfirmed,
    OrderLine,
    OrderPlaced,
)
from meshop.contracts.seed import seed_products
from meshop.mesh.events.envelope import UnreadableEvent
from meshop.mesh.testing import TestMesh, TestService
from reviews import store
from reviews.contract import POST, ReviewCreate

SKU = str(seed_products()[0]["sku"])
PRODUCT = str(seed_products()[0]["id"])
OTHER = str(seed_products()[1]["sku"])
OTHER_PRODUCT = str(seed_products()[1]["id"])
TEXT = ReviewCreate(rating=5, text="Worth every cent, twice over.")


def _placed(order_id: str, user_id: str, *skus: str) -> OrderPlaced:
    items = [OrderLine(sku=sku, quantity=1) for sku in skus]
    return OrderPlaced(order_id=order_id, user_id=user_id, total_cents=100, items=items)


def _confirmed(order_id: str, user_id: str) -> OrderConfirmed:
    return OrderConfirmed(order_id=order_id, user_id=user_id, total_cents=100)


async def _verified(service: TestService, review_id: str) -> bool:
    async with service.database.read() as conn:
        review = await store.find(conn, review_id)
    assert review is not None
    return review.verified_purchase


async def test_a_confirmed_order_verifies_the_customers_review_of_what_it_held(
    mesh: TestMesh, reviews: TestService, token: Callable[..., str]
) -> None:
    review = await mesh.call(POST, TEXT, token=token("u-1"), path_params={"id": PRODUCT})
    other = await mesh.call(POST, TEXT, token=token("u-2"), path_params={"id": PRODUCT})
    await reviews.deliver("purchases", ORDER_PLACED, _placed("o1", "u-1", SKU, OTHER))
    assert not await _verified(reviews, review.id)  # placed is not bought
    await reviews.deliver("purchases", ORDER_CONFIRMED, _confirmed("o1", "u-1"))
    assert await _verified(reviews, review.id)
    assert not await _verified(reviews, other.id)  # another customer's


async def test_a_review_after_a_confirmed_order_is_verified_at_once(
    mesh: TestMesh, reviews: TestService, token: Callable[..., str]
) -> None:
    await reviews.deliver("purchases", ORDER_PLACED, _placed("o1", "u-1", SKU))
    await reviews.deliver("purchases", ORDER_CONFIRMED, _confirmed("o1", "u-1"))
    assert (await mesh.call(POST, TEXT, token=token("u-1"), path_params={"id": PRODUCT})).verified_purchase
    assert not (await mesh.call(POST, TEXT, token=token("u-1"), path_params={"id": OTHER_PRODUCT})).verified_purchase


async def test_the_consumer_reads_only_placed_and_confirmed_orders(reviews: TestService) -> None:
    """A cancelled order is not the consumer's: in the shop, it would be dead-lettered, never handled."""
    cancelled = OrderCancelled(order_id="o1", user_id="u-1", total_cents=100, cancel_reason="payment declined")
    with pytest.raises(UnreadableEvent, match="does not read"):
        await reviews.deliver("purchases", ORDER_CANCELLED, cancelled)


async def test_a_reset_forgets_purchases_so_a_replay_learns_them_again(
    mesh: TestMesh, reviews: TestService, token: Callable[..., str]
) -> None:
    await reviews.deliver("purchases", ORDER_PLACED, _placed("o1", "u-1", SKU))
    await reviews.deliver("purchases", ORDER_CONFIRMED, _confirmed("o1", "u-1"))
    review = await mesh.call(POST, TEXT, token=token("u-1"), path_params={"id": PRODUCT})
    assert review.verified_purchase
    await reviews.reset("purchases")
    assert not await _verified(reviews, review.id)
    await reviews.deliver("purchases", ORDER_PLACED, _placed("o1", "u-1", SKU))  # the replay
    await reviews.deliver("purchases", ORDER_CONFIRMED, _confirmed("o1", "u-1"))
    assert await _verified(reviews, review.id)
