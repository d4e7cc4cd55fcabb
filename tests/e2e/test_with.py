"""`meshop up --with reviews.app:DEFINITION`: the guide's service runs inside the shop, as one
of its own — its identity, its NATS user, its routes at the gateway, its replicas."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.e2e.api import Api, order_body
from tests.e2e.conftest import Shop, start_shop

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture(scope="module")
def shop_with_reviews(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shop]:
    path = os.pathsep.join(p for p in (str(EXAMPLES), os.environ.get("PYTHONPATH", "")) if p)
    running = start_shop(
        tmp_path_factory.mktemp("shop-with"),
        "--with",
        "reviews.app:DEFINITION",
        "--replicas",
        "reviews=2",
        env={"PYTHONPATH": path},
    )
    yield running
    running.stop()


async def _reviews_of(api: Api, product_id: str) -> list[dict[str, Any]]:
    status, page, _ = await api.request("GET", f"/reviews/products/{product_id}/reviews")
    assert status == 200, page
    return list(page["items"])


async def test_a_review_of_a_bought_product_is_a_verified_purchase(
    shop_with_reviews: Shop, session: aiohttp.ClientSession
) -> None:
    buyer, stranger = Api(session, shop_with_reviews.url), Api(session, shop_with_reviews.url)
    await buyer.signup()
    await stranger.signup()
    status, found, _ = await buyer.request("GET", "/catalog/products?q=skillet")
    product = found["items"][0]
    assert product["sku"] == "KIT-001"

    status, accepted, _ = await buyer.request(
        "POST", "/orders", order_body(quantity=1), headers={"idempotency-key": uuid.uuid4().hex}
    )
    assert status == 202
    assert (await buyer.settled(accepted["id"]))["status"] == "CONFIRMED"

    # Reviews learns of the purchase from orders' events, over its own NATS user.
    status, mine, _ = await buyer.request(
        "POST", f"/reviews/products/{product['id']}/reviews", {"rating": 5, "text": "Even heat."}
    )
    assert status == 201, mine
    status, theirs, _ = await stranger.request(
        "POST", f"/reviews/products/{product['id']}/reviews", {"rating": 2, "text": "Never bought it."}
    )
    assert status == 201, theirs
    assert theirs["verified_purchase"] is False
    deadline = time.monotonic() + 15
    while not {r["id"]: r for r in await _reviews_of(buyer, product["id"])}[mine["id"]]["verified_purchase"]:
        assert time.monotonic() < deadline, "the buyer's review never became a verified purchase"
        await asyncio.sleep(0.1)

    status, again, _ = await buyer.request(
        "POST", f"/reviews/products/{product['id']}/reviews", {"rating": 4, "text": "A second review of it."}
    )
    assert status == 409, again
    status, missing, content_type = await buyer.request(
        "POST", "/reviews/products/no-such-product/reviews", {"rating": 4, "text": "No such product here."}
    )
    assert status == 404, missing
    assert content_type == "application/problem+json"


async def test_the_gateway_documents_it_and_status_lists_its_replicas(
    shop_with_reviews: Shop, session: aiohttp.ClientSession
) -> None:
    async with session.get(shop_with_reviews.url + "/openapi.json") as resp:
        spec = await resp.json()
    assert "/api/reviews/products/{id}/reviews" in spec["paths"]
    assert "/api/catalog/products" in spec["paths"]
    instances = [i for i in shop_with_reviews.status() if i["service"] == "reviews"]
    assert len(instances) == 2, instances
