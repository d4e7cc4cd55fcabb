"""The gateway's aggregated /openapi.json: what the proxy enforces is what the document says."""

from __future__ import annotations

from typing import Any

import jsonschema_rs
import msgspec
import pytest

from meshop.contracts import SERVICES, contracts, operations_of
from meshop.gateway.app import shop_openapi
from meshop.gateway.config import parse
from meshop.gateway.routes import RouteTable
from meshop.mesh.api.operation import Operation
from meshop.mesh.errors import ConfigError

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


@pytest.fixture(scope="module")
def shop_doc() -> dict[str, Any]:
    """The document of the shop as `meshop up` routes it (no routes file)."""
    return shop_openapi(parse(b"", source="defaults"), RouteTable(), "1")


def _operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(path, method, op) for path, methods in doc["paths"].items() for method, op in methods.items()]


def _contract(operation_id: str) -> Operation[Any, Any]:
    service, _, name = operation_id.partition(".")
    [op] = [op for op in operations_of(service) if op.name == name]
    return op


def _examples(op: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(what, media type object) of the operation's request body and success answer."""
    found = []
    if "requestBody" in op:
        found.append(("request", op["requestBody"]["content"]["application/json"]))
    [(status, success)] = [(s, r) for s, r in op["responses"].items() if s.startswith("2")]
    if "content" in success:
        found.append((f"answer {status}", success["content"]["application/json"]))
    return found


def test_every_operation_shows_an_example_request_and_answer(shop_doc: dict[str, Any]) -> None:
    for path, method, op in _operations(shop_doc):
        for what, media in _examples(op):
            assert "example" in media, (method, path, what)
        for param in op.get("parameters", []):
            if param["in"] == "path":
                assert param.get("example"), (method, path, param["name"])


def test_every_example_is_valid_for_the_service_and_for_the_document(shop_doc: dict[str, Any]) -> None:
    """The service decodes each example as its contract's type, and it validates against the
    document's schema (jsonschema_rs comes with schemathesis, a dev dependency)."""
    checked = 0
    for path, method, op in _operations(shop_doc):
        contract = _contract(op["operationId"])
        for what, media in _examples(op):
            type_ = contract.request if what == "request" else contract.response
            msgspec.json.decode(msgspec.json.encode(media["example"]), type=type_)  # raises when invalid
            schema = {**media["schema"], "components": shop_doc["components"]}  # its $refs resolve in it
            errors = [e.message for e in jsonschema_rs.Draft202012Validator(schema).iter_errors(media["example"])]
            assert errors == [], (method, path, what)
            checked += 1
    assert checked > 40


def test_operations_come_service_by_service_the_customer_s_first_and_the_admin_s_last(
    shop_doc: dict[str, Any],
) -> None:
    tags = [tag["name"] for tag in shop_doc["tags"]]
    assert tags == ["users", "catalog", "inventory", "orders", "shipping", "admin"]
    assert all(tag["description"] for tag in shop_doc["tags"])
    order = [op["operationId"] for _, _, op in _operations(shop_doc)]
    assert order[:2] == ["users.register", "users.login"]
    assert order.index("catalog.list") < order.index("orders.create") < order.index("orders.get")
    sections = [tags.index(op["tags"][0]) for _, _, op in _operations(shop_doc)]
    assert sections == sorted(sections)  # one section after the other, as /docs shows them
    admin = [op["x-meshop-access"] == "admin" for _, _, op in _operations(shop_doc)]
    assert admin == sorted(admin)  # every admin operation after every customer one
    assert all(op["tags"] == ["admin"] for _, _, op in _operations(shop_doc) if op["x-meshop-access"] == "admin")


# --- A service built elsewhere (`meshop up --with`) is routed and documented like the shop's ---


def test_a_contract_from_elsewhere_is_routed_and_documented_after_the_shops() -> None:
    known = contracts(["reviews.contract"])
    table = RouteTable(known)
    assert table.resolve("reviews", "GET", "/products/p-1/reviews").operation.name == "list"
    doc = shop_openapi(parse(b"", source="defaults", services=list(known)), table, "1")
    posted = doc["paths"]["/api/reviews/products/{id}/reviews"]["post"]
    assert posted["x-meshop-access"] == "user"
    assert posted["tags"] == ["reviews"]
    tags = [tag["name"] for tag in doc["tags"]]
    assert tags.index("reviews") > tags.index("shipping")
    assert "/api/reviews/products/{id}/reviews" not in shop_openapi(parse(b"", source="d"), RouteTable(), "1")["paths"]


@pytest.mark.parametrize(
    ("module", "says"),
    [("no_such_contract_module", "cannot import the contract"), ("meshop.contracts.catalog", "has a contract already")],
)
def test_a_contract_that_cannot_join_is_refused(module: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        contracts([module])


def test_a_routes_file_may_lead_only_to_services_that_run() -> None:
    routes = '[[routes]]\nprefix = "/api/reviews"\nservice = "reviews"\n'
    with pytest.raises(ConfigError, match="reviews"):
        parse(routes, source="routes.toml")
    assert parse(routes, source="routes.toml", services=[*SERVICES, "reviews"]).rules[0].service == "reviews"
