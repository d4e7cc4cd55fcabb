"""/docs in headless Chromium: the customer's operations first, service by service, and each
operation's example request and answer from its contract."""

from __future__ import annotations

import pytest

from tests.e2e.browser import artifacts, browser_page
from tests.e2e.conftest import Shop

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


async def test_docs_shows_the_customer_flow_first_with_examples(shop: Shop) -> None:
    from playwright.async_api import expect

    async with browser_page("the docs' browser test") as (page, problems):
        await page.goto(shop.url + "/docs")
        sections = page.locator("#operations > section")
        await expect(sections).to_have_count(6)
        tags = await sections.evaluate_all("nodes => nodes.map(n => n.dataset.tag)")
        assert tags == ["users", "catalog", "inventory", "orders", "shipping", "admin"]
        paths = await page.locator("details.operation > summary .path").all_inner_texts()
        assert paths[:2] == ["/api/users/register", "/api/users/login"]
        admin = await sections.last.locator("details.operation > summary .path").all_inner_texts()
        assert admin
        assert all("/admin/" in path or path.startswith("/api/console/") for path in admin)

        register = page.locator("details.operation").first
        await register.locator("> summary").click()
        request = await register.locator(".example-request").inner_text()
        assert request.startswith("POST /api/users/register\n")
        assert '"email": "ada@example.com"' in request
        assert (await register.locator(".example-answer").inner_text()).startswith("201 Created\n")

        product = page.locator("details.operation", has_text="/api/catalog/products/{id}").first
        await product.locator("> summary").click()
        request = await product.locator(".example-request").inner_text()
        assert request == "GET /api/catalog/products/99aefbf6b3b422c886f1dffe"
        assert '"sku": "KIT-001"' in await product.locator(".example-answer").inner_text()
        await page.screenshot(path=artifacts("docs") / "docs.png", full_page=False)
    assert problems == []
