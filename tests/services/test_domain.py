"""The services' rules (their `domain.py`), without a database or a network."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from meshop.contracts.catalog import Product, ProductCreate, ProductUpdate
from meshop.contracts.orders import OrderCancelled, OrderConfirmed, OrderLine, OrderPlaced
from meshop.mesh import Conflict, Unprocessable
from meshop.services.catalog import domain as catalog
from meshop.services.orders import domain as orders
from meshop.services.payments import domain as payments
from meshop.services.users import domain as users


def test_a_products_id_is_its_skus_so_one_sku_is_one_product() -> None:
    body = ProductCreate(sku="KIT-1", name="Kit", description="A kit", price_cents=100, currency="USD", category="c")
    assert catalog.new_product(body)["id"] == catalog.product_id("KIT-1") != catalog.product_id("KIT-2")


def test_an_edit_changes_only_the_fields_it_gives() -> None:
    assert catalog.changes(ProductUpdate(price_cents=5)) == {"price_cents": 5}
    assert catalog.changes(ProductUpdate()) == {}


def test_a_search_is_its_first_eight_words_in_lower_case() -> None:
    assert catalog.search_words("Red  KIT a b c d e f g h") == ["red", "kit", "a", "b", "c", "d", "e", "f"]
    assert catalog.search_words(None) == []


def product(sku: str, price_cents: int, currency: str = "USD") -> Product:
    return Product(id=sku, sku=sku, name=sku, description="", price_cents=price_cents, currency=currency, category="c")


def test_an_order_is_priced_at_the_catalogs_prices() -> None:
    priced = orders.price(
        [OrderLine(sku="A", quantity=2), OrderLine(sku="B", quantity=1)], [product("A", 150), product("B", 99)]
    )
    assert (priced.total_cents, priced.currency) == (399, "USD")
    assert [(line.sku, line.price_cents) for line in priced.lines] == [("A", 150), ("B", 99)]


def test_an_order_with_an_unknown_sku_or_two_currencies_is_refused() -> None:
    with pytest.raises(Unprocessable, match="unknown SKU: Z"):
        orders.price([OrderLine(sku="Z", quantity=1)], [])
    with pytest.raises(Unprocessable, match="same currency"):
        orders.price(
            [OrderLine(sku="A", quantity=1), OrderLine(sku="B", quantity=1)], [product("A", 1), product("B", 1, "EUR")]
        )


def test_an_idempotency_key_reused_with_another_request_is_a_conflict() -> None:
    row = SimpleNamespace(id="o1", status="PENDING", request_hash="h1")
    assert orders.accepted_again(row, "h1").id == "o1"
    with pytest.raises(Conflict, match="different request"):
        orders.accepted_again(row, "h2")


@pytest.mark.parametrize(
    ("move", "status", "needed"),
    [
        (payments.CAPTURE, "AUTHORIZED", True),
        (payments.CAPTURE, "CAPTURED", False),
        (payments.CAPTURE, "REFUNDED", False),
        (payments.VOID, "AUTHORIZED", True),
        (payments.VOID, "VOIDED", False),
        (payments.VOID, "DECLINED", False),
        (payments.REFUND, "CAPTURED", True),
        (payments.REFUND, "REFUNDED", False),
    ],
)
def test_a_payment_moves_once_and_a_repeat_changes_nothing(move: payments.Move, status: str, needed: bool) -> None:
    assert move.needed(status) is needed


@pytest.mark.parametrize(
    ("move", "status"),
    [(payments.CAPTURE, "VOIDED"), (payments.VOID, "CAPTURED"), (payments.REFUND, "AUTHORIZED")],
)
def test_a_payment_cannot_move_from_where_its_rules_forbid(move: payments.Move, status: str) -> None:
    with pytest.raises(Conflict, match=f"cannot {move.name} a payment that is {status}"):
        move.needed(status)


def test_order_events_count_against_the_customer() -> None:
    assert users.order_stats_change(OrderPlaced(order_id="o", user_id="u", total_cents=5, items=[])) == {"placed": 1}
    confirmed = OrderConfirmed(order_id="o", user_id="u", total_cents=5)
    assert users.order_stats_change(confirmed) == {"confirmed": 1, "spent_cents": 5}
    cancelled = OrderCancelled(order_id="o", user_id="u", total_cents=5, cancel_reason="OUT_OF_STOCK")
    assert users.order_stats_change(cancelled) == {"cancelled": 1}


def test_an_email_is_an_identity_trimmed_and_in_lower_case() -> None:
    account = users.new_account(" Ann@Example.COM ", " Ann ", "hash", roles=users.CUSTOMER_ROLES, now="t")
    assert (account["email"], account["name"], account["roles"]) == ("ann@example.com", "Ann", ["customer"])
