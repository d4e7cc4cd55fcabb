"""The catalog's rules: a product is its SKU, what an edit may change, how a search matches.

- A product's id is derived from its SKU, so the same SKU cannot be created twice (the
  second create is a conflict, however many replicas race).
- An edit changes only the fields it gives; the SKU and the currency never change.
- A search matches the products whose name, description and category contain every one of
  its first `MAX_SEARCH_WORDS` words, in any case.
"""

from __future__ import annotations

import hashlib
from typing import Any

from meshop.contracts.catalog import Product, ProductCreate, ProductUpdate

MAX_SEARCH_WORDS = 8


def product_id(sku: str) -> str:
    return hashlib.sha256(sku.encode()).hexdigest()[:24]


def search_text(name: str, description: str, category: str) -> str:
    """What a search looks into: the product's words, lower-cased."""
    return f"{name} {description} {category}".lower()


def search_words(q: str | None) -> list[str]:
    """The words a product must all contain to match the search `q`."""
    return (q or "").lower().split()[:MAX_SEARCH_WORDS]


def new_product(body: ProductCreate) -> dict[str, Any]:
    """The row of a product created from `body`."""
    return {
        "id": product_id(body.sku),
        "sku": body.sku,
        "name": body.name,
        "description": body.description,
        "price_cents": body.price_cents,
        "currency": body.currency,
        "category": body.category,
        "search_text": search_text(body.name, body.description, body.category),
    }


def changes(body: ProductUpdate) -> dict[str, Any]:
    """The fields `body` changes (those it gives)."""
    given = (
        ("name", body.name),
        ("description", body.description),
        ("price_cents", body.price_cents),
        ("category", body.category),
    )
    return {field: value for field, value in given if value is not None}


def product(row: dict[str, Any]) -> Product:
    return Product(
        id=row["id"],
        sku=row["sku"],
        name=row["name"],
        description=row["description"],
        price_cents=row["price_cents"],
        currency=row["currency"],
        category=row["category"],
    )
