"""The gateway's aggregated /openapi.json: what the proxy enforces is what the document says."""

from __future__ import annotations

from typing import Any

import pytest

from meshop.gateway.app import shop_openapi
from meshop.gateway.config import parse
from meshop.gateway.routes import RouteTable

ROUTES = """
[[routes]]
prefix = "/api/catalog"
service = "catalog"
auth = "admin"                      # stricter than the public GET /products

[[routes]]
prefix = "/api/orders"
service = "orders"
methods = ["GET"]

[[routes]]
prefix = "/api/orders"
service = "orders"
methods = ["POST"]
auth = "admin"

[[routes]]
prefix = "/api/shipping"
service = "shipping"
methods = ["GET"]
"""


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return shop_openapi(parse(ROUTES, source="test"), RouteTable(), "1.2.3")


def test_a_route_auth_stricter_than_the_operation_is_documented(doc: dict[str, Any]) -> None:
    products = doc["paths"]["/api/catalog/products"]["get"]
    assert products["x-meshop-access"] == "admin"
    assert {"401", "403"} <= set(products["responses"])
    assert products["security"] == [{"bearer": []}]


def test_rules_with_one_prefix_merge_their_methods(doc: dict[str, Any]) -> None:
    root = doc["paths"]["/api/orders/"]
    assert set(root) == {"get", "post"}  # GET from one rule, POST from the other
    assert root["get"]["x-meshop-access"] == "user"
    assert "401" in root["get"]["responses"]
    assert "403" not in root["get"]["responses"]
    assert root["post"]["x-meshop-access"] == "admin"  # the POST rule's auth, not the GET rule's
    assert "403" in root["post"]["responses"]
    assert set(doc["paths"]["/api/orders/{id}"]) == {"get"}
    assert set(doc["paths"]["/api/orders/{id}/cancel"]) == {"post"}


def test_only_methods_a_rule_admits_and_only_routed_services_appear(doc: dict[str, Any]) -> None:
    assert "/api/shipping/quotes" not in doc["paths"]  # POST, the rule admits GET only
    assert "get" in doc["paths"]["/api/shipping/admin/shipments"]
    assert not any(path.startswith(("/api/payments", "/api/users")) for path in doc["paths"])


def test_every_operation_documents_the_gateways_own_statuses(doc: dict[str, Any]) -> None:
    operations = [(p, m, op) for p, methods in doc["paths"].items() for m, op in methods.items()]
    assert len(operations) > 10
    for path, method, op in operations:
        codes = set(op["responses"])
        assert {"429", "431", "500", "503", "504"} <= codes, (path, method)
        if op["x-meshop-access"] in ("user", "admin"):
            assert "401" in codes, (path, method)
            assert op["security"] == [{"bearer": []}], (path, method)
        if op["x-meshop-access"] == "admin":
            assert "403" in codes, (path, method)
        if "requestBody" in op:
            assert {"400", "413", "422"} <= codes, (path, method)
        if "{" in path:
            assert "404" in codes, (path, method)
    assert doc["info"] == {"title": "meshop shop API", "version": "1.2.3"}
    assert "Problem" in doc["components"]["schemas"]


def test_without_a_routes_file_every_service_keeps_its_contracts_access() -> None:
    doc = shop_openapi(parse(b"", source="defaults"), RouteTable(), "1")
    assert doc["paths"]["/api/catalog/products"]["get"]["x-meshop-access"] == "public"
    assert "401" not in doc["paths"]["/api/catalog/products"]["get"]["responses"]
    assert doc["paths"]["/api/orders/admin/orders"]["get"]["x-meshop-access"] == "admin"
