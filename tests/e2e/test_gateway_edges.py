"""The gateway's edges end to end: a routes file's `auth` stricter than the contract, one
customer acting on another's order (BOLA), and a body over the limit sent whole before
the answer is read."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator

import aiohttp
import pytest

from tests.e2e.api import Api, order_body
from tests.e2e.conftest import Shop, start_shop

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

ROUTES = """
[limits]
per_ip = "1000/s burst 1000"
per_user = "1000/s burst 1000"

[[routes]]
prefix = "/api/users"
service = "users"

[[routes]]
prefix = "/api/catalog"
service = "catalog"

[[routes]]
prefix = "/api/orders"
service = "orders"

[[routes]]
prefix = "/api/staff/catalog"      # the public catalog, for staff only
service = "catalog"
auth = "admin"

[[routes]]
prefix = "/api/staff/users"        # user operations, for staff only
service = "users"
auth = "admin"
"""


@pytest.fixture(scope="module")
def edge_shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shop]:
    data_dir = tmp_path_factory.mktemp("gateway-edges")
    routes = data_dir / "routes.toml"
    routes.write_text(ROUTES)
    running = start_shop(data_dir, env={"MESHOP_GATEWAY_ROUTES_FILE": str(routes)})
    yield running
    running.stop()


async def _customer(session: aiohttp.ClientSession, shop: Shop) -> Api:
    api = Api(session, shop.url)
    await api.signup()
    return api


async def _admin(session: aiohttp.ClientSession, shop: Shop) -> Api:
    api = Api(session, shop.url)
    password = (shop.data_dir / "admin-password").read_text().strip()
    status, token, _ = await api.request("POST", "/users/login", {"email": "admin@meshop.local", "password": password})
    assert status == 200
    api.token = token["access_token"]
    return api


@pytest.mark.parametrize("path", ["/staff/catalog/products?limit=1", "/staff/users/me"])
async def test_a_route_auth_stricter_than_the_operation_wins(
    session: aiohttp.ClientSession, edge_shop: Shop, path: str
) -> None:
    anonymous = Api(session, edge_shop.url)
    status, problem, content_type = await anonymous.request("GET", path)
    assert (status, content_type, problem["status"]) == (401, "application/problem+json", 401)
    customer = await _customer(session, edge_shop)
    status, problem, _ = await customer.request("GET", path)
    assert (status, problem["status"]) == (403, 403)
    admin = await _admin(session, edge_shop)
    status, _, _ = await admin.request("GET", path)
    assert status == 200


async def test_the_override_is_per_route_and_documented(session: aiohttp.ClientSession, edge_shop: Shop) -> None:
    anonymous = Api(session, edge_shop.url)
    status, page, _ = await anonymous.request("GET", "/catalog/products?limit=1")  # the contract's own route
    assert status == 200
    assert page["items"]
    async with session.get(edge_shop.url + "/openapi.json") as resp:
        doc = json.loads(await resp.read())
    staff = doc["paths"]["/api/staff/catalog/products"]["get"]
    assert staff["x-meshop-access"] == "admin"
    assert {"401", "403"} <= set(staff["responses"])
    public = doc["paths"]["/api/catalog/products"]["get"]
    assert public["x-meshop-access"] == "public"
    assert "401" not in public["responses"]


async def test_a_customer_cannot_cancel_or_see_another_customers_order(
    session: aiohttp.ClientSession, edge_shop: Shop
) -> None:
    alice = await _customer(session, edge_shop)
    bob = await _customer(session, edge_shop)
    status, placed, _ = await alice.request(
        "POST", "/orders", order_body(quantity=1), headers={"idempotency-key": uuid.uuid4().hex}
    )
    assert status == 202
    order_id = placed["id"]
    status, refused, _ = await bob.request("POST", f"/orders/{order_id}/cancel")  # while it may still be PENDING
    assert status == 404
    status, missing, _ = await bob.request("POST", f"/orders/{uuid.uuid4()}/cancel")
    assert status == 404
    assert (refused["title"], refused["detail"]) == (missing["title"], missing["detail"])  # no existence oracle
    status, _, _ = await bob.request("GET", f"/orders/{order_id}")
    assert status == 404
    order = await alice.settled(order_id)
    assert (order["status"], order["cancel_reason"]) == ("CONFIRMED", None)  # Bob's cancel changed nothing
    status, _, _ = await bob.request("POST", f"/orders/{order_id}/cancel")
    assert status == 404
    status, still, _ = await alice.request("GET", f"/orders/{order_id}")
    assert (status, still["status"]) == (200, "CONFIRMED")


async def _exchange(shop: Shop, request: bytes) -> tuple[bytes, dict[str, str], bytes]:
    """One request on its own connection, as `curl` sends it: the status line, headers and body."""
    host, port = shop.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(request)
    answer = await asyncio.wait_for(reader.read(), 10.0)  # `connection: close`: to the end
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    return status.encode(), headers, body


@pytest.mark.parametrize(
    "path", ["/api/catalog/products?limit=2", "/", "/docs", "/docs/docs.js", "/openapi.json", "/console"]
)
async def test_head_answers_as_get_does_without_a_body(edge_shop: Shop, path: str) -> None:
    """`curl -I`: GET's status and headers, its body's content-length, and no body."""
    request = f"{{}} {path} HTTP/1.1\r\nhost: shop\r\nconnection: close\r\n\r\n"
    got_status, got_headers, got = await _exchange(edge_shop, request.format("GET").encode())
    status, headers, body = await _exchange(edge_shop, request.format("HEAD").encode())
    assert (status, body) == (got_status, b"")
    assert status.startswith(b"HTTP/1.1 200 ")
    assert headers["content-length"] == got_headers["content-length"] == str(len(got))
    assert set(headers) == set(got_headers)


@pytest.mark.parametrize("path", ["/nowhere", "/api/nowhere", "/docs"])
async def test_oversized_headers_are_431_on_any_path(
    session: aiohttp.ClientSession, edge_shop: Shop, path: str
) -> None:
    async with session.get(edge_shop.url + path, headers={"x-big": "a" * 20_000}) as resp:
        problem = json.loads(await resp.read())
        assert (resp.status, resp.headers["content-type"], problem["status"]) == (431, "application/problem+json", 431)
        assert problem["instance"] == path
        assert resp.headers["x-content-type-options"] == "nosniff"


async def test_the_root_page_says_what_meshop_is_and_links_to_the_rest(
    session: aiohttp.ClientSession, edge_shop: Shop
) -> None:
    async with session.get(edge_shop.url + "/") as resp:
        page = await resp.text()
        assert resp.status == 200
        assert resp.headers["content-type"].startswith("text/html")
        assert "default-src 'none'" in resp.headers["content-security-policy"]  # no CDN, nothing inline
        assert resp.headers["x-frame-options"] == "DENY"
    assert "meshop" in page
    links = re.findall(r'href="([^"]+)"', page)
    assert {"/docs", "/console", "/openapi.json", "/api/catalog/products"} <= set(links)
    for link in links:  # every one of them is served
        async with session.get(edge_shop.url + link) as resp:
            assert resp.status == 200, link


async def test_a_service_s_problem_names_the_public_path(session: aiohttp.ClientSession, edge_shop: Shop) -> None:
    async with session.post(
        edge_shop.url + "/api/users/login", data=b"{not json", headers={"content-type": "application/json"}
    ) as resp:
        problem = json.loads(await resp.read())
    assert (resp.status, problem["status"]) == (400, 400)
    assert problem["instance"] == "/api/users/login"


def _post_whole_body_then_read(shop: Shop, size: int, extra: bytes) -> bytes:
    """What urllib and most SDKs do: the head, all of the body, and only then read (to the end)."""
    host, port = shop.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        head = b"POST /api/users/login HTTP/1.1\r\nhost: shop\r\ncontent-type: application/json\r\n"
        sock.sendall(head + b"content-length: %d\r\n%s\r\n" % (size, extra))
        sock.sendall(b"x" * size)
        got = b""
        while chunk := sock.recv(65536):
            got += chunk
        return got


@pytest.mark.parametrize("extra", [b"", b"connection: close\r\n"], ids=["keep-alive", "connection-close"])
async def test_a_20_mb_body_sent_whole_before_reading_gets_the_413(edge_shop: Shop, extra: bytes) -> None:
    """The issue's repro: a connection reset, not the 413, until the server lingered after it."""
    got = await asyncio.to_thread(_post_whole_body_then_read, edge_shop, 20_000_000, extra)
    head, _, body = got.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    assert status.startswith("HTTP/1.1 413 ")
    assert (headers["content-type"], headers["connection"]) == ("application/problem+json", "close")
    problem = json.loads(body)
    assert (problem["status"], problem["instance"]) == (413, "/api/users/login")


async def test_urllib_posting_20_mb_reads_the_413_problem(edge_shop: Shop) -> None:
    def post() -> tuple[int, dict[str, object]]:
        request = urllib.request.Request(
            edge_shop.url + "/api/users/login", data=b"x" * 20_000_000, headers={"content-type": "application/json"}
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=30)
        return refused.value.code, json.loads(refused.value.read())

    status, problem = await asyncio.to_thread(post)
    assert (status, problem["status"], problem["type"]) == (413, 413, "urn:meshop:problem:payload-too-large")
