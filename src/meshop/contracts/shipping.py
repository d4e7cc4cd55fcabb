"""The shipping service: quotes and shipments through a carrier."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from meshop.mesh import Access, EventType, Example, Operation, outbox_operation

Text = Annotated[str, Meta(min_length=1, max_length=200)]


class Address(msgspec.Struct, kw_only=True):
    name: Text
    line1: Text
    city: Text
    postal_code: Annotated[str, Meta(min_length=1, max_length=20)]
    country: Annotated[str, Meta(pattern=r"^[A-Z]{2}$", description="a two-letter country code", examples=["US"])]


class Parcel(msgspec.Struct, kw_only=True):
    sku: Annotated[str, Meta(min_length=1, max_length=40)]
    quantity: Annotated[int, Meta(ge=1, le=1000)]


class QuoteRequest(msgspec.Struct, kw_only=True):
    address: Address
    items: Annotated[list[Parcel], Meta(min_length=1, max_length=100)]


class Quote(msgspec.Struct, kw_only=True):
    carrier: str
    price_cents: int
    eta_days: int


class ShipmentRequest(msgspec.Struct, kw_only=True):
    order_id: Annotated[str, Meta(min_length=1, max_length=64)]
    address: Address
    items: Annotated[list[Parcel], Meta(min_length=1, max_length=100)]


class Shipment(msgspec.Struct, kw_only=True):
    id: str
    order_id: str
    status: Literal["CREATED", "CANCELLED"]
    tracking_number: str
    carrier: str


QUOTE = Operation(
    "shipping",
    "quote",
    "POST",
    "/quotes",
    QuoteRequest,
    Quote,
    Access.PUBLIC,
    idempotent=True,
    summary="Price and delay of a shipment",
)
CREATE = Operation(
    "shipping",
    "create",
    "POST",
    "/internal/shipments",
    ShipmentRequest,
    Shipment,
    requires_key=True,
    summary="Create a shipment (422 when the carrier cannot serve the address)",
    callers=("orders",),
)
CANCEL: Operation[None, Shipment] = Operation(
    "shipping",
    "cancel",
    "POST",
    "/internal/shipments/{id}/cancel",
    None,
    Shipment,
    idempotent=True,
    errors=(404,),
    summary="Cancel a shipment",
    callers=("orders",),
)


class UndoRequest(msgspec.Struct, kw_only=True):
    """Undo by the forward step's idempotency key: the effect may not exist yet, or ever."""

    order_id: Annotated[str, Meta(min_length=1, max_length=64)]


CANCEL_BY_KEY: Operation[UndoRequest, Shipment] = Operation(
    "shipping",
    "cancel_by_key",
    "POST",
    "/internal/shipments/cancel-by-key",
    UndoRequest,
    Shipment,
    requires_key=True,
    idempotent=True,
    summary="Cancel the shipment made with this Idempotency-Key; if none exists yet, none ever will",
    callers=("orders",),
)


class AdminShipment(msgspec.Struct, kw_only=True):
    order_id: str
    status: Literal["CREATED", "CANCELLED"]
    tracking_number: str


class AdminShipmentPage(msgspec.Struct, kw_only=True):
    items: list[AdminShipment]
    next_cursor: str | None


ADMIN_SHIPMENTS: Operation[None, AdminShipmentPage] = Operation(
    "shipping",
    "admin_shipments",
    "GET",
    "/admin/shipments",
    None,
    AdminShipmentPage,
    Access.ADMIN,
    idempotent=True,
    errors=(422,),
    summary="Every shipment (limit <= 1000, cursor)",
)

ADMIN_OUTBOX = outbox_operation("shipping")


# Events (emitted in the transaction of the change they announce; see meshop.mesh.emit).


class ShipmentCreated(msgspec.Struct, kw_only=True, frozen=True):
    shipment_id: str
    order_id: str
    tracking_number: str


class ShipmentCancelled(msgspec.Struct, kw_only=True, frozen=True):
    shipment_id: str
    order_id: str
    tracking_number: str


SHIPMENT_CREATED = EventType(source="shipping", name="ShipmentCreated", data=ShipmentCreated)
SHIPMENT_CANCELLED = EventType(source="shipping", name="ShipmentCancelled", data=ShipmentCancelled)


# What /docs and /openapi.json show for each operation (every one validates: tests/gateway).
EXAMPLE_ADDRESS = Address(
    name="Ada Lovelace", line1="1 Loop Road", city="Springfield", postal_code="12345", country="US"
)
EXAMPLES: dict[Operation[Any, Any], Example] = {
    QUOTE: Example(
        request=QuoteRequest(address=EXAMPLE_ADDRESS, items=[Parcel(sku="KIT-001", quantity=2)]),
        response=Quote(carrier="simulated-post", price_cents=0, eta_days=2),
    ),
    ADMIN_SHIPMENTS: Example(
        response=AdminShipmentPage(
            items=[
                AdminShipment(
                    order_id="0b7e2c1a-54f3-4d2e-8a61-9f3b7c5d2e10", status="CREATED", tracking_number="SIM000004815162"
                )
            ],
            next_cursor=None,
        )
    ),
}
