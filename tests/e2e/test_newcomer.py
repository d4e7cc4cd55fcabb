"""What a newcomer meets first, through the gateway: every service's admin outbox, a
restock of a SKU the catalog does not sell, logging out without a body, and a malformed
email's message (issue 21)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.e2e.api import Api, admin_token
from tests.e2e.conftest import Shop

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


@pytest.fixture
async def api(shop: Shop) -> AsyncIterator[Api]:
    async with aiohttp.ClientSession() as session:
        yield Api(session, shop.url)


@pytest.fixture
async def admin(api: Api, shop: Shop) -> Api:
    api.token = await admin_token(api, shop)
    return api


async def test_every_service_with_a_database_has_an_admin_outbox_and_users_is_empty(admin: Api) -> None:
    for service in ("users", "catalog", "inventory", "orders", "payments", "shipping"):
        status, outbox, _ = await admin.request("GET", f"/{service}/admin/outbox")
        assert status == 200, (service, outbox)
        assert set(outbox) == {"pending", "oldest_pending_age_s"}
    status, outbox, _ = await admin.request("GET", "/users/admin/outbox")
    assert outbox == {"pending": 0, "oldest_pending_age_s": 0.0}  # users emits no events


async def test_restocking_a_sku_the_catalog_does_not_sell_is_404_and_creates_no_stock(admin: Api) -> None:
    status, problem, content_type = await admin.request(
        "POST", "/inventory/admin/stock/NOPE-404/restock", {"quantity": 5}
    )
    assert (status, content_type) == (404, "application/problem+json")
    assert "NOPE-404" in problem["detail"]
    status, _, _ = await admin.request("GET", "/inventory/stock/NOPE-404")
    assert status == 404  # no stock record was created


async def test_restocking_a_sku_the_catalog_sells_adds_to_its_stock(admin: Api) -> None:
    before = await admin.stock("KIT-003")
    status, stock, _ = await admin.request("POST", "/inventory/admin/stock/KIT-003/restock", {"quantity": 5})
    assert (status, stock["sku"], stock["available"]) == (200, "KIT-003", before + 5)
    assert await admin.stock("KIT-003") == before + 5


async def test_logout_without_a_body_revokes_the_token(api: Api) -> None:
    await api.signup()
    status, _, _ = await api.request("POST", "/users/logout")
    assert status == 204
    status, _, _ = await api.request("GET", "/users/me")
    assert status == 401


async def test_a_malformed_email_is_rejected_in_words(api: Api) -> None:
    account = {"email": "ada.example.com", "password": "correct horse", "name": "Ada"}
    status, problem, content_type = await api.request("POST", "/users/register", account)
    assert (status, content_type) == (422, "application/problem+json")
    assert problem["detail"] == "email: must be an email address, like name@example.com"
