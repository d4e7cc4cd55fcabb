"""The whole shop through the gateway only: accounts, browsing, checkout, bad input."""

from __future__ import annotations

import asyncio
import json
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import nats
import pytest

from meshop.runtime.connection import login_of, nats_url_of
from tests.e2e.api import DECLINE, Api, admin_token, order_body
from tests.e2e.conftest import Shop

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


@pytest.fixture
async def api(shop: Shop) -> AsyncIterator[Api]:
    async with aiohttp.ClientSession() as session:
        yield Api(session, shop.url)


async def test_register_login_browse_and_check_out(api: Api) -> None:
    await api.signup()
    status, me, _ = await api.request("GET", "/users/me")
    assert status == 200
    assert me["roles"] == ["customer"]

    status, page, _ = await api.request("GET", "/catalog/products?limit=5")
    assert status == 200
    assert len(page["items"]) == 5
    assert page["next_cursor"]
    status, page2, _ = await api.request("GET", f"/catalog/products?limit=5&cursor={page['next_cursor']}")
    assert {p["id"] for p in page["items"]}.isdisjoint(p["id"] for p in page2["items"])
    status, found, _ = await api.request("GET", "/catalog/products?q=skillet")
    assert [p["sku"] for p in found["items"]] == ["KIT-001"]
    product = found["items"][0]
    status, same, _ = await api.request("GET", f"/catalog/products/{product['id']}")
    assert same == product

    before = await api.stock("KIT-001")
    key = uuid.uuid4().hex
    status, accepted, _ = await api.request("POST", "/orders", order_body(quantity=2), headers={"idempotency-key": key})
    assert status == 202
    assert accepted["status"] == "PENDING"
    order = await api.settled(accepted["id"])
    assert order["status"] == "CONFIRMED"
    assert order["cancel_reason"] is None
    assert order["total_cents"] == 2 * product["price_cents"]
    assert order["payment"] == {"status": "CAPTURED"}
    assert order["shipment"]["tracking_number"]
    assert order["shipment"]["carrier"]
    assert [h["event"] for h in order["history"]][-1] == "CONFIRMED"
    assert await api.stock("KIT-001") == before - 2

    # The same key and body: the same order, nothing new.
    status, again, _ = await api.request("POST", "/orders", order_body(quantity=2), headers={"idempotency-key": key})
    assert status == 202
    assert again["id"] == accepted["id"]
    assert await api.stock("KIT-001") == before - 2
    # The same key with another body: a conflict.
    status, _problem, ctype = await api.request(
        "POST", "/orders", order_body(quantity=3), headers={"idempotency-key": key}
    )
    assert status == 409
    assert ctype == "application/problem+json"

    status, mine, _ = await api.request("GET", "/orders")
    assert [o["id"] for o in mine["items"]] == [accepted["id"]]


async def test_a_declined_card_cancels_the_order_and_restores_stock(api: Api) -> None:
    await api.signup()
    before = await api.stock("KIT-002")
    status, accepted, _ = await api.request(
        "POST", "/orders", order_body(sku="KIT-002", quantity=3, card=DECLINE), headers={"idempotency-key": "d1"}
    )
    assert status == 202
    order = await api.settled(accepted["id"])
    assert order["status"] == "CANCELLED"
    assert order["cancel_reason"] == "PAYMENT_DECLINED"
    assert order["payment"] == {"status": "DECLINED"}
    assert order["shipment"] is None
    assert await api.stock("KIT-002") == before


async def test_insufficient_stock_cancels_as_out_of_stock(api: Api) -> None:
    await api.signup()
    before = await api.stock("KIT-003")
    body = order_body(sku="KIT-003", quantity=before // 2 + 1)
    body["items"].append({"sku": "KIT-003", "quantity": before // 2 + 1})
    status, accepted, _ = await api.request("POST", "/orders", body, headers={"idempotency-key": "o1"})
    assert status == 202
    order = await api.settled(accepted["id"])
    assert (order["status"], order["cancel_reason"]) == ("CANCELLED", "OUT_OF_STOCK")
    assert await api.stock("KIT-003") == before


async def test_an_unserved_address_voids_the_payment_and_releases_stock(api: Api) -> None:
    await api.signup()
    before = await api.stock("KIT-004")
    _status, accepted, _ = await api.request(
        "POST", "/orders", order_body(sku="KIT-004", country="AQ"), headers={"idempotency-key": "s1"}
    )
    order = await api.settled(accepted["id"])
    assert (order["status"], order["cancel_reason"]) == ("CANCELLED", "SHIPPING_UNAVAILABLE")
    assert order["payment"] == {"status": "VOIDED"}
    assert await api.stock("KIT-004") == before


async def test_another_users_order_does_not_exist_for_you(api: Api) -> None:
    await api.signup()
    status, accepted, _ = await api.request("POST", "/orders", order_body(), headers={"idempotency-key": "b1"})
    await api.signup()  # a second user
    status, _problem, _ = await api.request("GET", f"/orders/{accepted['id']}")
    assert status == 404


async def test_internal_topology_is_not_shown_to_clients_by_default(api: Api, shop: Shop) -> None:
    async with api.session.get(shop.url + "/api/catalog/products?limit=1") as resp:
        assert resp.status == 200
        assert "x-meshop-upstream" not in resp.headers
        assert resp.headers["x-request-id"]


@pytest.mark.parametrize(
    ("method", "path", "raw", "status"),
    [
        ("POST", "/orders", b"{not json", 400),
        ("POST", "/orders", b"", 400),
        ("POST", "/orders", b'{"items": []}', 422),
        ("POST", "/orders", json.dumps(order_body(quantity=0)).encode(), 422),
        ("POST", "/orders", json.dumps(order_body(quantity=-1)).encode(), 422),
        ("POST", "/orders", json.dumps(order_body(sku="NOPE-404")).encode(), 422),
        ("POST", "/orders", json.dumps(order_body(card="4242424242424241")).encode(), 422),
        ("POST", "/users/register", b'{"email": "x"}', 422),
        ("POST", "/users/login", b'{"email": "nobody@example.com", "password": "wrong password"}', 401),
        ("GET", "/catalog/products?limit=0", None, 422),
        ("GET", "/catalog/products?cursor=%%%", None, 422),
        ("GET", "/catalog/products/does-not-exist", None, 404),
        ("POST", "/inventory/internal/reservations", b"{}", 404),
        ("GET", "/nosuchservice/x", None, 404),
        ("DELETE", "/catalog/products", None, 405),
    ],
)
async def test_bad_input_is_a_4xx_problem_never_a_500(
    api: Api, method: str, path: str, raw: bytes | None, status: int
) -> None:
    await api.signup()
    got, problem, ctype = await api.request(
        method, path, raw=raw, headers={"idempotency-key": uuid.uuid4().hex, "content-type": "application/json"}
    )
    assert (got, ctype) == (status, "application/problem+json"), problem
    assert problem["status"] == status
    assert "Traceback" not in json.dumps(problem)


async def test_no_token_is_401_and_a_forged_one_too(api: Api) -> None:
    status, _, ctype = await api.request("POST", "/orders", order_body(), headers={"idempotency-key": "n"})
    assert (status, ctype) == (401, "application/problem+json")
    api.token = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhZG1pbiJ9."
    status, _, _ = await api.request("GET", "/orders")
    assert status == 401


async def test_an_order_without_an_idempotency_key_is_rejected(api: Api) -> None:
    await api.signup()
    status, problem, _ = await api.request("POST", "/orders", order_body())
    assert status == 400
    assert "Idempotency-Key" in problem["detail"]


async def test_the_admin_account_exists_with_a_generated_password_kept_0600(api: Api, shop: Shop) -> None:
    path = shop.data_dir / "admin-password"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    password = path.read_text().strip()
    assert len(password) >= 16
    assert password in shop.output()  # printed once, at creation
    status, token, _ = await api.request("POST", "/users/login", {"email": "admin@meshop.local", "password": password})
    assert status == 200
    api.token = token["access_token"]
    status, me, _ = await api.request("GET", "/users/me")
    assert me["roles"] == ["admin"]
    status, _created, _ = await api.request(
        "POST", "/catalog/admin/products", {"sku": "NEW-1", "name": "New thing", "price_cents": 100}
    )
    assert status == 201
    await api.signup()  # a customer may not
    status, _, _ = await api.request("POST", "/catalog/admin/products", {"sku": "NEW-2", "name": "x", "price_cents": 1})
    assert status == 403


async def test_status_lists_every_registered_instance_with_health(shop: Shop) -> None:
    rows = shop.status()
    via_gateway = subprocess.run(  # noqa: ASYNC221 - a CLI run, bounded by its timeout
        [sys.executable, "-m", "meshop", "status", "--json", "--url", shop.url],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert {(r["service"], r["instance_id"]) for r in json.loads(via_gateway.stdout)} == {
        (r["service"], r["instance_id"]) for r in rows
    }
    assert {r["service"] for r in rows} == {
        "users",
        "catalog",
        "inventory",
        "orders",
        "payments",
        "shipping",
        "console",
        "gateway",
    }
    assert all(r["health"] == "ready" for r in rows)
    assert all(r["pid"] > 0 and r["address"].startswith("127.0.0.1:") for r in rows)


async def collect(api: Api, path: str, limit: int = 2) -> list[dict[str, Any]]:
    """Every item of a cursor-paginated admin list, `limit` at a time."""
    items: list[dict[str, Any]] = []
    cursor = ""
    for _ in range(1000):
        status, page, _ = await api.request("GET", f"{path}?limit={limit}" + (f"&cursor={cursor}" if cursor else ""))
        assert status == 200, page
        assert len(page["items"]) <= limit
        items.extend(page["items"])
        if not page["next_cursor"]:
            return items
        cursor = page["next_cursor"]
    raise AssertionError("pagination did not end")


async def test_admin_lists_page_through_everything_and_agree_with_each_other(api: Api, shop: Shop) -> None:
    await api.signup()
    status, accepted, _ = await api.request(
        "POST", "/orders", order_body(sku="BOO-001"), headers={"idempotency-key": "adm"}
    )
    await api.settled(accepted["id"])
    customer = api.token
    status, _, _ = await api.request("GET", "/orders/admin/orders")
    assert status == 403  # a customer may not
    api.token = await admin_token(api, shop)
    orders = await collect(api, "/orders/admin/orders")
    payments = {p["order_id"]: p for p in await collect(api, "/payments/admin/payments", limit=3)}
    shipments = {s["order_id"]: s for s in await collect(api, "/shipping/admin/shipments", limit=3)}
    stock = await collect(api, "/inventory/admin/stock", limit=25)
    assert len({o["id"] for o in orders}) == len(orders) >= 1
    assert len(stock) >= 60
    for order in orders:
        payment = payments.get(order["id"])
        if order["status"] == "CONFIRMED":
            assert payment is not None
            assert payment["captured_cents"] - payment["refunded_cents"] == order["total_cents"]
            assert shipments[order["id"]]["status"] == "CREATED"
        elif order["status"] == "CANCELLED" and payment is not None:
            assert payment["captured_cents"] - payment["refunded_cents"] == 0
    status, _, _ = await api.request("GET", "/orders/admin/orders?limit=1001")
    assert status == 422
    for service in ("orders", "inventory", "payments", "shipping", "catalog"):
        deadline = time.monotonic() + 5
        while True:  # every event reaches its stream
            status, outbox, _ = await api.request("GET", f"/{service}/admin/outbox")
            assert status == 200, (service, outbox)
            if outbox["pending"] == 0:
                break
            assert time.monotonic() < deadline, (service, outbox)
            await asyncio.sleep(0.2)
    # as `meshop events`: it may read the streams
    nc = await nats.connect(nats_url_of(shop.data_dir), **login_of(shop.data_dir, "events").options())
    try:
        types: dict[str, int] = {}
        for service in ("orders", "inventory", "payments", "shipping"):
            stream = f"MESHOP_EVENTS_{service.upper()}"
            info = await nc.jetstream().stream_info(stream)
            for seq in range(info.state.first_seq, info.state.last_seq + 1):
                event = json.loads((await nc.jetstream().get_msg(stream, seq)).data)
                types[event["type"]] = types.get(event["type"], 0) + 1
    finally:
        await nc.close()
    settled = sum(1 for o in orders if o["status"] != "PENDING")
    confirmed = sum(1 for o in orders if o["status"] == "CONFIRMED")
    assert types.get("OrderPlaced", 0) >= len(orders)
    assert types.get("OrderConfirmed", 0) + types.get("OrderCancelled", 0) >= settled
    for event in ("StockCommitted", "PaymentCaptured", "ShipmentCreated"):
        assert types.get(event, 0) >= confirmed, (event, types)
    api.token = customer
