"""The gateway's lane (`Proxy.lane`): the common request answered without a task.

A real gateway pipeline over real sockets — lean server, mesh client, HTTP pool, a
backend service — served twice: with the lane and without it. Whatever the lane takes
must be answered as the general path answers it, and whatever it cannot take (a body, an
unknown token, a refusal before the call) must reach the general path untouched.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from meshop.gateway import config
from meshop.gateway.proxy import GatewayLimits, Proxy
from meshop.mesh.client.client import ServiceClient
from meshop.mesh.headers import DEADLINE_HEADER
from meshop.mesh.registry import Instance, StaticRegistry
from meshop.mesh.resilience.ratelimit import LocalLimiter
from meshop.mesh.security.tokens import SigningKey, TokenIssuer, TokenVerifier
from meshop.mesh.telemetry import tracing
from meshop.mesh.transport.server import HttpServer, Lean
from meshop.runtime.nats_server import free_port

pytestmark = pytest.mark.integration

ROUTES = """
[limits]
per_ip = "1000/s burst 1000"
per_user = "1000/s burst 1000"
[[routes]]
prefix = "/api/catalog"
service = "catalog"
timeout_s = 0.3
[[routes]]
prefix = "/api/orders"
service = "orders"
auth = "user"
rate_limit = "3/m burst 3"
"""


def backend() -> Starlette:
    async def products(request: Request) -> Response:
        seen = {k: request.headers.get(k) for k in ("x-request-id", "x-forwarded-for", "traceparent", DEADLINE_HEADER)}
        return JSONResponse({"query": str(request.query_params), "seen": seen})

    async def product(request: Request) -> Response:
        found = request.path_params["id"]
        if found == "busy":
            return JSONResponse({"title": "busy"}, status_code=503, headers={"retry-after": "0"})
        if found == "slow":
            await asyncio.sleep(2)
        if found == "gone":  # a service's problem names its own path
            problem = {"type": "urn:meshop:problem:not-found", "status": 404, "instance": request.url.path}
            return JSONResponse(problem, status_code=404, media_type="application/problem+json")
        return JSONResponse({"id": found})

    async def create(request: Request) -> Response:
        return JSONResponse({"created": await request.json()}, status_code=201)

    async def order(request: Request) -> Response:
        return JSONResponse({"id": request.path_params["id"]})

    return Starlette(
        routes=[
            Route("/products", products),
            Route("/admin/products", create, methods=["POST"]),
            Route("/products/{id}", product),
            Route("/{id}", order),
        ]
    )


@dataclass
class Shop:
    lane_url: str
    plain_url: str
    token: str
    admin_token: str
    taken: list[tuple[str, bool]] = field(default_factory=list)


@pytest.fixture
async def shop() -> AsyncIterator[Shop]:
    service = HttpServer(backend(), host="127.0.0.1", port=0)
    port = await service.start()
    registry = StaticRegistry(
        [
            Instance(service=name, instance_id=f"{name}-1", address="127.0.0.1", port=port, pid=0)
            for name in ("catalog", "orders")
        ]
    )
    key = SigningKey.generate()

    async def jwks() -> dict[str, Any]:
        return {"keys": [key.public_jwk()]}

    issuer = TokenIssuer(key)
    token, admin_token = issuer.issue("user-1", ["customer"]), issuer.issue("admin-1", ["admin"])
    servers: list[HttpServer] = [service]
    urls: list[str] = []
    shop = Shop("", "", token, admin_token)
    for with_lane in (True, False):
        proxy = Proxy(
            ServiceClient(registry),
            TokenVerifier(jwks),
            LocalLimiter(),
            config.parse(ROUTES, source="test"),
            GatewayLimits(max_body_bytes=1 << 16, max_header_bytes=8192, timeout_s=5.0),
        )

        def lane(scope: dict[str, Any], answer: Callable[[int, bytes, bytes], None], proxy: Proxy = proxy) -> bool:
            taken = proxy.lane(scope, answer)
            shop.taken.append((scope["path"], taken))
            return taken

        server = HttpServer(Lean(proxy, lane=lane if with_lane else None), host="127.0.0.1", port=0)
        urls.append(f"http://127.0.0.1:{await server.start()}")
        servers.append(server)
    shop.lane_url, shop.plain_url = urls
    yield shop
    for server in servers:
        await server.stop()


async def fetch(
    url: str, path: str, *, token: str | None = None, method: str = "GET", **headers: str
) -> tuple[int, dict[str, str], Any]:
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    async with aiohttp.ClientSession() as session, session.request(method, url + path, headers=headers) as resp:
        body = await resp.read()
        return resp.status, {k.lower(): v for k, v in resp.headers.items()}, json.loads(body) if body else None


VARYING = {"date", "x-request-id", "ratelimit-remaining", "ratelimit-reset"}


@pytest.mark.parametrize(
    ("path", "who", "taken"),
    [
        pytest.param("/api/catalog/products?q=tea", None, True, id="public GET"),
        pytest.param("/api/orders/o-1", "user", True, id="a user's GET"),
        pytest.param("/api/catalog/products/busy", None, True, id="the service's 503"),
        pytest.param("/api/catalog/products/slow", None, True, id="the route's timeout: 504"),
        pytest.param("/api/orders/o-1", None, False, id="no token: 401"),
        pytest.param("/api/orders/admin/orders", "user", False, id="the admin role missing: 403"),
        pytest.param("/api/nowhere", None, False, id="no route: 404"),
        pytest.param("/api/catalog/things", None, False, id="no operation: 404"),
    ],
)
async def test_the_lane_answers_as_the_general_path_does(shop: Shop, path: str, who: str | None, taken: bool) -> None:
    token = shop.token if who == "user" else None
    if token is not None:  # verified once by the general path: then the lane knows it
        await fetch(shop.lane_url, "/api/orders/warm-up", token=token, **{"content-length": "0"})
    shop.taken.clear()
    lane_status, lane_headers, lane_body = await fetch(shop.lane_url, path, token=token)
    status, headers, body = await fetch(shop.plain_url, path, token=token)
    assert shop.taken == [(path.partition("?")[0], taken)]
    assert lane_status == status
    assert set(lane_headers) == set(headers)
    assert {k: v for k, v in lane_headers.items() if k not in VARYING} == {
        k: v for k, v in headers.items() if k not in VARYING
    }
    if status == 200 and "seen" in body:  # what the service was sent: only ids differ
        assert lane_body["query"] == body["query"] == "q=tea"
        assert lane_body["seen"]["x-forwarded-for"] == "127.0.0.1"
        assert lane_body["seen"]["traceparent"] is not None
        assert lane_body["seen"]["x-request-id"] == lane_headers["x-request-id"]
        assert 0 < int(lane_body["seen"][DEADLINE_HEADER]) <= 300  # the route's timeout
    elif lane_body is not None and "type" in lane_body:  # problem+json: the same problem
        assert {k: v for k, v in lane_body.items() if k != "instance"} == {
            k: v for k, v in body.items() if k != "instance"
        }
    else:
        assert lane_body == body


async def test_the_lane_refuses_over_a_limit_as_the_general_path_does(shop: Shop) -> None:
    await fetch(shop.lane_url, "/api/orders/warm-up", token=shop.token, **{"content-length": "0"})  # 1 of 3
    shop.taken.clear()
    statuses = [(await fetch(shop.lane_url, "/api/orders/o-1", token=shop.token))[0] for _ in range(3)]
    assert statuses == [200, 200, 429]
    assert [taken for _, taken in shop.taken] == [True, True, True]
    _, headers, problem = await fetch(shop.lane_url, "/api/orders/o-1", token=shop.token)
    assert problem["status"] == 429
    assert int(headers["retry-after"]) >= 1
    assert headers["ratelimit-remaining"] == "0"


async def test_a_request_the_lane_cannot_take_is_served_whole_by_the_general_path(shop: Shop) -> None:
    shop.taken.clear()
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            shop.lane_url + "/api/catalog/admin/products",
            json={"sku": "tea-1"},
            headers={"authorization": f"Bearer {shop.admin_token}"},
        ) as resp,
    ):
        assert resp.status == 201
        assert await resp.json() == {"created": {"sku": "tea-1"}}  # the body reached the service
    assert shop.taken == [("/api/catalog/admin/products", False)]


async def test_a_service_that_is_gone_is_a_503_through_the_lane(shop: Shop) -> None:
    dead = StaticRegistry(
        [Instance(service="catalog", instance_id="gone", address="127.0.0.1", port=free_port(), pid=0)]
    )
    proxy = Proxy(
        ServiceClient(dead),
        TokenVerifier(lambda: asyncio.sleep(0, {"keys": []})),
        LocalLimiter(),
        config.parse(ROUTES, source="test"),
        GatewayLimits(max_body_bytes=1 << 16, max_header_bytes=8192, timeout_s=5.0),
    )
    server = HttpServer(Lean(proxy, lane=proxy.lane), host="127.0.0.1", port=0)
    url = f"http://127.0.0.1:{await server.start()}"
    try:
        status, headers, problem = await fetch(url, "/api/catalog/products")
    finally:
        await server.stop()
    assert (status, problem["status"]) == (503, 503)
    assert headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize("lane", [True, False], ids=["the lane", "the general path"])
async def test_the_gateway_records_one_span_per_request_with_its_tries_as_events(
    shop: Shop, spans: list[tracing.SpanRecord], lane: bool
) -> None:
    url = shop.lane_url if lane else shop.plain_url
    parent = "00-" + "ab" * 16 + "-" + "cd" * 8 + "-00"  # not sampled: the gateway records anyway
    status, headers, body = await fetch(url, "/api/catalog/products", traceparent=parent)
    assert status == 200
    assert shop.taken == ([("/api/catalog/products", True)] if lane else [])
    [span] = spans  # no client span of its own: the call is recorded on the gateway's (decision 0015)
    assert (span.kind, span.name, span.trace_id, span.parent_id) == (
        "server",
        "GET /api/catalog/products",
        "ab" * 16,
        "cd" * 8,
    )
    assert span.attributes["http.response.status_code"] == 200
    [(name, _, attributes)] = span.events
    assert (name, attributes["instance"], attributes["transport"], attributes["result"]) == (
        "try",
        "catalog-1",
        "http",
        200,
    )
    assert body["seen"]["traceparent"].split("-")[2] == span.span_id  # the service's parent: the gateway span
    assert headers["x-request-id"] != "ab" * 16  # a continued trace is not one request

    spans.clear()  # a retried call: every try on the one span, before it ended
    status, _, _ = await fetch(url, "/api/catalog/products/busy")
    assert status == 503
    [span] = spans
    tries = [attributes for name, _, attributes in span.events if name == "try"]
    retries = [attributes for name, _, attributes in span.events if name == "retry"]
    assert len(tries) == len(retries) + 1 >= 2
    assert {attributes["result"] for attributes in tries} == {503}
    assert span.error


@pytest.mark.parametrize("lane", [True, False], ids=["the lane", "the general path"])
async def test_head_is_answered_as_get_is_without_its_body(shop: Shop, lane: bool) -> None:
    url = shop.lane_url if lane else shop.plain_url
    shop.taken.clear()
    status, headers, body = await fetch(url, "/api/catalog/products?q=tea", method="HEAD")
    assert (status, body) == (200, None)
    assert shop.taken == ([("/api/catalog/products", True)] if lane else [])
    got_status, got_headers, got = await fetch(url, "/api/catalog/products?q=tea")
    assert got_status == 200
    assert (
        headers["content-length"] == got_headers["content-length"] == str(len(json.dumps(got, separators=(",", ":"))))
    )
    assert {k for k in headers if k not in VARYING} == {k for k in got_headers if k not in VARYING}


async def test_a_405_allows_head_where_get_is_allowed(shop: Shop) -> None:
    status, headers, problem = await fetch(shop.lane_url, "/api/catalog/products", method="DELETE")
    assert (status, problem["status"]) == (405, 405)
    assert headers["allow"] == "GET, HEAD"


@pytest.mark.parametrize("lane", [True, False], ids=["the lane", "the general path"])
async def test_a_service_problem_names_the_public_path_as_its_instance(shop: Shop, lane: bool) -> None:
    status, headers, problem = await fetch(shop.lane_url if lane else shop.plain_url, "/api/catalog/products/gone")
    assert (status, headers["content-type"]) == (404, "application/problem+json")
    assert problem == {"type": "urn:meshop:problem:not-found", "status": 404, "instance": "/api/catalog/products/gone"}


@pytest.mark.parametrize("path", ["/api/catalog/products", "/api/nowhere"])
async def test_oversized_headers_are_431_before_any_route_is_looked_up(shop: Shop, path: str) -> None:
    shop.taken.clear()
    status, headers, problem = await fetch(shop.lane_url, path, **{"x-big": "a" * 20_000})
    assert (status, problem["status"], headers["content-type"]) == (431, 431, "application/problem+json")
    assert shop.taken == [(path, False)]
