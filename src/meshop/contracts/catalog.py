"""The catalog service: products, search, prices."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import Meta

from meshop.contracts.seed import seed_products
from meshop.mesh import Access, EventType, Example, Operation, outbox_operation

# A pattern's description and example are what a rejection says the value must be (mesh/api/validation.py).
Sku = Annotated[
    str,
    Meta(
        pattern=r"^[A-Z0-9][A-Z0-9-]{1,39}$",
        description="a SKU of 2 to 40 capital letters, digits and dashes",
        examples=["KIT-001"],
    ),
]
PriceCents = Annotated[int, Meta(ge=0, le=100_000_000)]
Currency = Annotated[str, Meta(pattern=r"^[A-Z]{3}$", description="a three-letter currency code", examples=["USD"])]


class Product(msgspec.Struct, kw_only=True):
    id: str
    sku: str
    name: str
    description: str
    price_cents: int
    currency: str
    category: str


class ProductPage(msgspec.Struct, kw_only=True):
    items: list[Product]
    next_cursor: str | None


class ProductCreate(msgspec.Struct, kw_only=True):
    sku: Sku
    name: Annotated[str, Meta(min_length=1, max_length=200)]
    description: Annotated[str, Meta(max_length=4000)] = ""
    price_cents: PriceCents
    currency: Currency = "USD"
    category: Annotated[str, Meta(min_length=1, max_length=60)] = "general"


class ProductUpdate(msgspec.Struct, kw_only=True, omit_defaults=True):
    name: Annotated[str, Meta(min_length=1, max_length=200)] | None = None
    description: Annotated[str, Meta(max_length=4000)] | None = None
    price_cents: PriceCents | None = None
    category: Annotated[str, Meta(min_length=1, max_length=60)] | None = None


class LookupRequest(msgspec.Struct, kw_only=True):
    skus: Annotated[list[Sku], Meta(max_length=100)]


class LookupResult(msgspec.Struct, kw_only=True):
    items: list[Product]


LIST: Operation[None, ProductPage] = Operation(
    "catalog",
    "list",
    "GET",
    "/products",
    None,
    ProductPage,
    Access.PUBLIC,
    idempotent=True,
    errors=(422,),
    summary="List or search products (q, category, limit, cursor)",
    per_try_timeout_s=1.0,
)
GET: Operation[None, Product] = Operation(
    "catalog",
    "get",
    "GET",
    "/products/{id}",
    None,
    Product,
    Access.PUBLIC,
    idempotent=True,
    summary="One product",
    per_try_timeout_s=1.0,
)
LOOKUP = Operation(
    "catalog",
    "lookup",
    "POST",
    "/internal/products/lookup",
    LookupRequest,
    LookupResult,
    idempotent=True,
    summary="Products by SKU",
    callers=("orders", "inventory"),
    per_try_timeout_s=1.0,
)
CREATE = Operation(
    "catalog",
    "create",
    "POST",
    "/admin/products",
    ProductCreate,
    Product,
    Access.ADMIN,
    status=201,
    errors=(409,),
    summary="Add a product",
)
UPDATE = Operation(
    "catalog",
    "update",
    "PATCH",
    "/admin/products/{id}",
    ProductUpdate,
    Product,
    Access.ADMIN,
    idempotent=True,
    summary="Change a product or its price",
)

ADMIN_OUTBOX = outbox_operation("catalog")


# Events (emitted in the transaction of the change they announce; see meshop.mesh.emit).


class ProductUpdated(msgspec.Struct, kw_only=True, frozen=True):
    """A product was created or changed (its state after the change)."""

    id: str
    sku: str
    name: str
    price_cents: int
    currency: str
    category: str


PRODUCT_UPDATED = EventType(source="catalog", name="ProductUpdated", data=ProductUpdated)


# What /docs and /openapi.json show for each operation (every one validates: tests/gateway).
_SEEDED = {str(p["sku"]): p for p in seed_products()}
_SKILLET = msgspec.convert(_SEEDED["KIT-001"], Product)
_KNIFE = msgspec.convert(_SEEDED["KIT-002"], Product)
_KETTLE = Product(
    id="3b8f1f4c2d6e4a0b9c7d5e1f",
    sku="KIT-100",
    name="Stovetop Kettle",
    description="1.7 l enamelled kettle",
    price_cents=3900,
    currency="USD",
    category="kitchen",
)
EXAMPLES: dict[Operation[Any, Any], Example] = {
    LIST: Example(response=ProductPage(items=[_SKILLET, _KNIFE], next_cursor="KIT-002")),
    GET: Example(response=_SKILLET, params={"id": _SKILLET.id}),
    CREATE: Example(
        request=ProductCreate(
            sku="KIT-100",
            name="Stovetop Kettle",
            description="1.7 l enamelled kettle",
            price_cents=3900,
            category="kitchen",
        ),
        response=_KETTLE,
    ),
    UPDATE: Example(
        request=ProductUpdate(price_cents=3500),
        response=msgspec.structs.replace(_KETTLE, price_cents=3500),
        params={"id": _KETTLE.id},
    ),
}
