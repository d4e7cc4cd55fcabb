"""The reviews service's operations, called through a test mesh as customers, admins and services."""

from __future__ import annotations

from collections.abc import Callable

import msgspec
import pytest
import sqlalchemy as sa

from meshop.contracts.seed import seed_products
from meshop.mesh import Conflict, Forbidden, NotFound, Unauthorized, Unprocessable, decode_cursor
from meshop.mesh.events.envelope import Reader
from meshop.mesh.testing import TestMesh, TestService
from reviews import store
from reviews.contract import HIDE, LIST, POST, REVIEW_POSTED, ReviewCreate

SKU = str(seed_products()[0]["sku"])
PRODUCT = str(seed_products()[0]["id"])
GOOD = ReviewCreate(rating=4, text="  Sturdy,   and it heats evenly.  ")


async def test_a_customer_reviews_a_product_the_catalog_sells(
    mesh: TestMesh, reviews: TestService, token: Callable[..., str]
) -> None:
    review = await mesh.call(POST, GOOD, token=token("u-1"), path_params={"id": PRODUCT})
    assert (review.product_id, review.sku, review.user_id, review.rating) == (PRODUCT, SKU, "u-1", 4)
    assert review.text == "Sturdy, and it heats evenly."
    assert (review.status, review.verified_purchase) == ("PUBLISHED", False)
    page = await mesh.call(LIST, path_params={"id": PRODUCT})
    assert [r.id for r in page.items] == [review.id]


async def test_a_review_of_a_product_nobody_sells_is_not_found(
    mesh: TestMesh, reviews: TestService, token: Callable[..., str]
) -> None:
    for product_id in ("0" * 24, "not an id"):
        with pytest.raises(NotFound):
            await mesh.call(POST, GOOD, token=token("u-1"), path_params={"id": product_id})


async def test_a_review_needs_a_signed_in_customer(mesh: TestMesh, reviews: TestService) -> None:
    with pytest.raises(Unauthorized):
        await mesh.call(POST, GOOD, path_params={"id": PRODUCT})


async def test_a_customer_reviews_a_product_once(
    mesh: TestMesh, reviews: TestService, token: Callable[..., str]
) -> None:
    await mesh.call(POST, GOOD, token=token("u-1"), path_params={"id": PRODUCT})
    with pytest.raises(Conflict):
        await mesh.call(POST, GOOD, token=token("u-1"), path_params={"id": PRODUCT})
    await mesh.call(POST, GOOD, token=token("u-2"), path_params={"id": PRODUCT})  # another customer may


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ({"rating": 0, "text": "Sturdy, and it heats evenly."}, "rating"),
        ({"rating": 6, "text": "Sturdy, and it heats evenly."}, "rating"),
        ({"rating": 5, "text": "  good   "}, "at least 10 characters"),
        ({"rating": 5, "text": "x" * 2001}, "text"),
    ],
)
async def test_a_rating_is_1_to_5_and_a_text_says_something(
    mesh: TestMesh, reviews: TestService, token: Callable[..., str], body: dict[str, object], why: str
) -> None:
    """The contract checks the shape at the edge; the domain, what the text says."""
    raw = msgspec.json.encode(body)
    with pytest.raises(Unprocessable, match=why):
        await mesh.call(POST, msgspec.Raw(raw), token=token("u-1"), path_params={"id": PRODUCT})


async def test_a_products_reviews_come_in_pages(
    mesh: TestMesh, reviews: TestService, token: Callable[..., str]
) -> None:
    posted = [await mesh.call(POST, GOOD, token=token(f"u-{i}"), path_params={"id": PRODUCT}) for i in range(5)]
    seen: list[str] = []
    cursor: str | None = None
    while True:
        query = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        page = await mesh.call(LIST, path_params={"id": PRODUCT}, query=query)
        assert len(page.items) <= 2
        seen += [r.id for r in page.items]
        cursor = page.next_cursor
        if cursor is None:
            break
        assert decode_cursor(cursor) == seen[-1]
    assert seen == sorted(r.id for r in posted)


async def test_a_hidden_review_leaves_its_products_page_and_only_an_admin_hides(
    mesh: TestMesh, reviews: TestService, token: Callable[..., str]
) -> None:
    review = await mesh.call(POST, GOOD, token=token("u-1"), path_params={"id": PRODUCT})
    with pytest.raises(Forbidden):
        await mesh.call(HIDE, token=token("u-1"), path_params={"id": review.id})
    hidden = await mesh.call(HIDE, token=token("a-1", "admin"), path_params={"id": review.id})
    assert hidden.status == "HIDDEN"
    assert (await mesh.call(LIST, path_params={"id": PRODUCT})).items == []
    with pytest.raises(NotFound):
        await mesh.call(HIDE, token=token("a-1", "admin"), path_params={"id": "nope"})


async def test_a_posted_review_is_announced_in_the_same_transaction(
    mesh: TestMesh, reviews: TestService, token: Callable[..., str]
) -> None:
    """No NATS in a test mesh: the event waits in the outbox table, where the relay would read it."""
    review = await mesh.call(POST, GOOD, token=token("u-1"), path_params={"id": PRODUCT})
    async with reviews.database.read() as conn:
        rows = (await conn.execute(sa.text("SELECT subject, payload FROM outbox"))).all()
        assert await store.find(conn, review.id) == review
    assert [row.subject for row in rows] == [REVIEW_POSTED.subject]
    data = Reader([REVIEW_POSTED]).read(rows[0].payload.encode()).data
    assert (data.review_id, data.sku, data.user_id, data.rating) == (review.id, SKU, "u-1", 4)


async def test_without_the_catalog_a_review_is_refused_for_now_not_lost(
    tmp_path: object, token: Callable[..., str]
) -> None:
    """503 with Retry-After when the catalog cannot say, never a 404 for a product it sells."""
    from pathlib import Path

    from meshop.mesh import ServiceUnavailable, TokenVerifier
    from reviews import app

    from .conftest import _jwks

    assert isinstance(tmp_path, Path)
    async with TestMesh(tmp_path, verifier=TokenVerifier(_jwks)) as mesh:
        await mesh.start(app.DEFINITION)
        with pytest.raises(ServiceUnavailable):
            await mesh.call(POST, GOOD, token=token("u-1"), path_params={"id": PRODUCT})
