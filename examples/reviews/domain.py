"""Reviews' rules: what a review's text must be, one review per customer and product, and
when a review counts as a verified purchase."""

from __future__ import annotations

import secrets
import time
from datetime import UTC, datetime

from meshop.contracts.catalog import Product
from meshop.mesh import Conflict, Conn, Unprocessable
from reviews import events, store
from reviews.contract import Review, ReviewCreate

#: Fewer characters than this (after trimming) say nothing about a product.
MIN_TEXT = 10


def clean_text(text: str) -> str:
    """The text as stored: runs of whitespace made one space, trimmed; 422 when too short."""
    cleaned = " ".join(text.split())
    if len(cleaned) < MIN_TEXT:
        raise Unprocessable(f"a review's text needs at least {MIN_TEXT} characters besides spaces")
    return cleaned


def new_id(now: float) -> str:
    """An id that sorts by creation time (milliseconds), then by chance: pages read oldest first."""
    return f"{int(now * 1000):013d}{secrets.token_hex(5)}"


async def post(conn: Conn, product: Product, user_id: str, body: ReviewCreate, *, now: float | None = None) -> Review:
    """Publish `user_id`'s review of `product` and announce it; 409 if they reviewed it already.

    A review is a verified purchase when the customer's confirmed order held the product;
    one confirmed later marks it then (events.purchase_confirmed).
    """
    sku = product.sku
    text = clean_text(body.text)
    if await store.find_by_author(conn, sku, user_id) is not None:
        raise Conflict(f"you have reviewed {sku} already")
    at = time.time() if now is None else now
    review = Review(
        id=new_id(at),
        product_id=product.id,
        sku=sku,
        user_id=user_id,
        rating=body.rating,
        text=text,
        verified_purchase=await store.has_bought(conn, user_id, sku),
        status="PUBLISHED",
        created_at=datetime.fromtimestamp(at, UTC).isoformat(),
    )
    await store.insert(conn, review)
    await events.review_posted(conn, review)
    return review
