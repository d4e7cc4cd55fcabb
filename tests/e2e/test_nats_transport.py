"""The shop with every call (gateway → service, service → service) over NATS."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest

from tests.e2e.api import Api, order_body
from tests.e2e.conftest import Shop, start_shop

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shop]:
    running = start_shop(
        tmp_path_factory.mktemp("nats"), env={"MESHOP_POLICY__default__transport": "nats", "MESHOP_DEBUG_HEADERS": "1"}
    )
    yield running
    running.stop()


@pytest.fixture
async def api(shop: Shop) -> AsyncIterator[Api]:
    async with aiohttp.ClientSession() as session:
        yield Api(session, shop.url)


async def test_a_checkout_runs_entirely_over_nats(api: Api, shop: Shop) -> None:
    await api.signup()
    async with api.session.get(shop.url + "/api/catalog/products?limit=1") as resp:
        assert resp.status == 200
        assert resp.headers["x-meshop-transport"] == "nats"
    before = await api.stock("HOM-001")
    status, accepted, _ = await api.request(
        "POST", "/orders", order_body(sku="HOM-001"), headers={"idempotency-key": uuid.uuid4().hex}
    )
    assert status == 202
    order = await api.settled(accepted["id"])
    assert order["status"] == "CONFIRMED"
    assert order["shipment"]["tracking_number"]
    assert await api.stock("HOM-001") == before - 2


async def test_bad_input_over_nats_is_still_a_4xx_problem(api: Api) -> None:
    await api.signup()
    status, _, ctype = await api.request("POST", "/orders", raw=b"{nope", headers={"idempotency-key": "x"})
    assert (status, ctype) == (400, "application/problem+json")
    status, _, _ = await api.request("GET", "/catalog/products/nope")
    assert status == 404
