"""The gateway as the one front door: routes file (and its hot reload), rate limits,
caching, limits and hygiene headers, CORS, mass assignment, /docs and OpenAPI. (JWT
attacks: test_jwt_attacks.py.)"""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDict

from meshop.mesh.testing import eventually
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
cache_ttl_s = 30

[[routes]]
prefix = "/api/inventory"
service = "inventory"
rate_limit = "1/s burst 3"

[[routes]]
prefix = "/api/orders"
service = "orders"

[[routes]]
prefix = "/api/shipping"
service = "shipping"
"""
ORIGIN = "https://shop.example"


@pytest.fixture(scope="module")
def gateway_shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shop]:
    data_dir = tmp_path_factory.mktemp("gateway")
    routes = data_dir / "routes.toml"
    routes.write_text(ROUTES)
    env = {"MESHOP_GATEWAY_ROUTES_FILE": str(routes), "MESHOP_GATEWAY_CORS_ORIGINS": f"{ORIGIN}, https://other.example"}
    running = start_shop(data_dir, env=env)
    yield running
    running.stop()


@pytest.fixture
async def api(gateway_shop: Shop) -> AsyncIterator[Api]:
    async with aiohttp.ClientSession() as session:
        yield Api(session, gateway_shop.url)


async def raw(api: Api, method: str, path: str, **kwargs: Any) -> tuple[int, CIMultiDict[str], bytes]:
    async with api.session.request(method, api.url.removesuffix("/api") + path, **kwargs) as resp:
        return resp.status, resp.headers.copy(), await resp.read()


async def test_every_answer_has_security_headers_a_request_id_and_an_access_log_line(
    api: Api, gateway_shop: Shop
) -> None:
    status, headers, _ = await raw(api, "GET", "/api/catalog/products?limit=1")
    assert status == 200
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["X-Frame-Options"] == "DENY"
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    assert len(headers["X-Request-Id"]) == 32
    status, headers, _ = await raw(api, "GET", "/api/nowhere", headers={"x-request-id": "my-id-1"})
    assert status == 404
    assert headers["X-Request-Id"] == "my-id-1"
    assert headers["Content-Type"] == "application/problem+json"
    await eventually(lambda: "[access ] GET /api/nowhere 404" in gateway_shop.output(), poll_s=0.1)
    assert "request_id=my-id-1" in gateway_shop.output()


async def test_a_route_rate_limit_answers_429_with_retry_after_and_ratelimit_headers(api: Api) -> None:
    answers = [await raw(api, "GET", "/api/inventory/stock/KIT-001") for _ in range(6)]
    statuses = [status for status, _, _ in answers]
    assert statuses[:3] == [200, 200, 200]  # the burst
    assert 429 in statuses[3:]
    _, headers, body = next(a for a in answers if a[0] == 429)
    assert int(headers["Retry-After"]) >= 1
    assert headers["RateLimit-Remaining"] == "0"
    assert headers["RateLimit-Limit"] == "3"
    assert json.loads(body)["type"] == "urn:meshop:problem:too-many-requests"
    assert answers[0][1]["RateLimit-Remaining"] in {"0", "1", "2"}


async def test_public_gets_are_cached_and_user_answers_never_are(api: Api) -> None:
    path = f"/api/catalog/products?limit=2&q=skillet&n={uuid.uuid4().hex}"
    first = await raw(api, "GET", path)
    second = await raw(api, "GET", path)
    assert first[0] == second[0] == 200
    assert "Age" not in first[1]
    assert "Age" in second[1]
    assert first[2] == second[2]
    await api.signup()
    for _ in range(2):
        status, headers, _ = await raw(api, "GET", "/api/users/me", headers={"authorization": f"Bearer {api.token}"})
        assert status == 200
        assert "Age" not in headers


async def test_oversized_headers_and_bodies_are_refused(api: Api) -> None:
    status, _, body = await raw(api, "GET", "/api/catalog/products", headers={"x-filler": "x" * 20_000})
    assert status == 431
    assert json.loads(body)["status"] == 431
    status, _, body = await raw(api, "POST", "/api/users/register", data=io.BytesIO(b"{" + b" " * 2_000_000 + b"}"))
    assert status == 413
    assert json.loads(body)["status"] == 413


async def test_cors_preflight_and_simple_requests_follow_the_allowed_origins(api: Api) -> None:
    preflight = {"origin": ORIGIN, "access-control-request-method": "POST"}
    status, headers, _ = await raw(api, "OPTIONS", "/api/orders", headers=preflight)
    assert status == 204
    assert "idempotency-key" in headers["Access-Control-Allow-Headers"]
    assert headers["Access-Control-Allow-Origin"] == ORIGIN
    status, headers, _ = await raw(
        api, "OPTIONS", "/api/orders", headers={**preflight, "origin": "https://evil.example"}
    )
    assert status == 403
    assert "Access-Control-Allow-Origin" not in headers
    status, headers, _ = await raw(api, "GET", "/api/catalog/products?limit=1", headers={"origin": ORIGIN})
    assert headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "x-request-id" in headers["Access-Control-Expose-Headers"]


async def test_client_sent_privileged_fields_are_ignored(api: Api) -> None:
    email = f"{uuid.uuid4().hex[:10]}@example.com"
    body = {"email": email, "password": "correct horse", "name": "Mallory", "roles": ["admin"], "id": "chosen"}
    status, user, _ = await api.request("POST", "/users/register", body)
    assert status == 201
    assert user["roles"] == ["customer"]
    assert user["id"] != "chosen"
    status, token, _ = await api.request("POST", "/users/login", {"email": email, "password": "correct horse"})
    api.token = token["access_token"]
    status, found, _ = await api.request("GET", "/catalog/products?q=skillet")
    price = found["items"][0]["price_cents"]
    sneaky = order_body(quantity=1, status="CONFIRMED", total_cents=1)
    sneaky["items"][0]["price_cents"] = 1
    status, accepted, _ = await api.request("POST", "/orders", sneaky, headers={"idempotency-key": uuid.uuid4().hex})
    assert status == 202
    assert accepted["status"] == "PENDING"
    status, order, _ = await api.request("GET", f"/orders/{accepted['id']}?wait_s=8")
    assert order["total_cents"] == price


async def test_docs_and_openapi_document_every_status(api: Api) -> None:
    status, headers, page = await raw(api, "GET", "/docs")
    assert status == 200
    assert headers["Content-Type"].startswith("text/html")
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    assert b"/docs/docs.js" in page
    status, headers, script = await raw(api, "GET", "/docs/docs.js")
    assert status == 200
    assert b"openapi.json" in script
    status, _, body = await raw(api, "GET", "/openapi.json")
    doc = json.loads(body)
    operations = [(path, method, op) for path, methods in doc["paths"].items() for method, op in methods.items()]
    assert operations
    assert not any(path.startswith("/api/payments") for path, _, _ in operations)  # not in the routes file
    for path, method, op in operations:
        codes = set(op["responses"])
        assert {"429", "503", "504"} <= codes, (path, method)
        if op["x-meshop-access"] in ("user", "admin"):
            assert "401" in codes, (path, method)
        if "requestBody" in op:
            assert {"413", "422"} <= codes, (path, method)


async def test_the_routes_file_is_reloaded_and_a_bad_edit_is_rejected(api: Api, gateway_shop: Shop) -> None:
    routes = gateway_shop.data_dir / "routes.toml"
    assert (await raw(api, "GET", "/api/shipping/admin/shipments"))[0] == 401  # routed (needs a token)
    routes.write_text(
        ROUTES.replace('prefix = "/api/shipping"\nservice = "shipping"', 'prefix = "/api/ship"\nservice = "shipping"')
    )

    async def moved() -> bool:
        return (await raw(api, "GET", "/api/shipping/admin/shipments"))[0] == 404

    await eventually(moved, poll_s=0.1)
    assert (await raw(api, "GET", "/api/ship/admin/shipments"))[0] == 401
    routes.write_text(ROUTES + "\n[[routes]]\nprefix = 'nope'\n")  # invalid: the table stays
    await eventually(lambda: "routes file rejected" in gateway_shop.output(), poll_s=0.1)
    assert (await raw(api, "GET", "/api/ship/admin/shipments"))[0] == 401
    routes.write_text(ROUTES)
    await eventually(lambda: _routed_again(api), poll_s=0.1)


async def _routed_again(api: Api) -> bool:
    return (await raw(api, "GET", "/api/shipping/admin/shipments"))[0] == 401


def test_tls_with_dev_certificates(tmp_path_factory: pytest.TempPathFactory) -> None:
    import ssl
    import subprocess
    import sys
    import urllib.request

    certs = tmp_path_factory.mktemp("certs")
    made = subprocess.run(
        [sys.executable, "-m", "meshop", "certs", "dev", "--dir", str(certs)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert "MESHOP_TLS_CERT_FILE" in made.stdout
    assert (certs / "key.pem").stat().st_mode & 0o777 == 0o600
    env = {"MESHOP_TLS_CERT_FILE": str(certs / "cert.pem"), "MESHOP_TLS_KEY_FILE": str(certs / "key.pem")}
    shop = start_shop(tmp_path_factory.mktemp("tls"), env=env)
    try:
        context = ssl.create_default_context(cafile=str(certs / "ca.pem"))
        assert "the shop is at https://" in shop.output()
        url = shop.url.replace("http://", "https://") + "/api/catalog/products?limit=1"
        with urllib.request.urlopen(url, context=context, timeout=10) as resp:
            assert resp.status == 200
            assert resp.headers["strict-transport-security"].startswith("max-age=")
        with pytest.raises(urllib.error.URLError):  # a client that does not trust the CA refuses it
            urllib.request.urlopen(url, context=ssl.create_default_context(), timeout=10)
    finally:
        shop.stop()
