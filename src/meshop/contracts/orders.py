"""The orders service: orders and the checkout that fulfils them."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from meshop.contracts.payments import Card
from meshop.contracts.shipping import Address
from meshop.mesh.admin import outbox_operation
from meshop.mesh.operation import Access, Operation

OrderStatus = Literal["PENDING", "CONFIRMED", "CANCELLED"]
CancelReason = Literal[
    "PAYMENT_DECLINED", "OUT_OF_STOCK", "SHIPPING_UNAVAILABLE", "TIMEOUT", "PAYMENT_FAILED", "CUSTOMER_CANCELLED"
]


class OrderLine(msgspec.Struct, kw_only=True):
    sku: Annotated[str, Meta(min_length=1, max_length=40)]
    quantity: Annotated[int, Meta(ge=1, le=1000)]


class CreateOrder(msgspec.Struct, kw_only=True):
    items: Annotated[list[OrderLine], Meta(min_length=1, max_length=50)]
    payment: Card
    shipping_address: Address


class OrderAccepted(msgspec.Struct, kw_only=True):
    id: str
    status: OrderStatus


class PricedLine(msgspec.Struct, kw_only=True):
    sku: str
    quantity: int
    name: str
    price_cents: int


class PaymentInfo(msgspec.Struct, kw_only=True):
    status: str


class ShipmentInfo(msgspec.Struct, kw_only=True):
    tracking_number: str
    carrier: str


class HistoryEntry(msgspec.Struct, kw_only=True):
    at: str
    event: str
    detail: str | None = None


class Order(msgspec.Struct, kw_only=True):
    id: str
    status: OrderStatus
    items: list[PricedLine]
    total_cents: int
    currency: str
    payment: PaymentInfo | None
    shipment: ShipmentInfo | None
    cancel_reason: CancelReason | None
    history: list[HistoryEntry]
    created_at: str


class OrderPage(msgspec.Struct, kw_only=True):
    items: list[Order]
    next_cursor: str | None


#: The span attribute naming the order a request is about (the console finds traces by it).
TRACE_ATTRIBUTE = "order.id"

CREATE = Operation(
    "orders",
    "create",
    "POST",
    "/",
    CreateOrder,
    OrderAccepted,
    Access.USER,
    requires_key=True,
    status=202,
    errors=(409,),
    summary="Place an order; checkout runs in the background",
)
GET: Operation[None, Order] = Operation(
    "orders", "get", "GET", "/{id}", None, Order, Access.USER, idempotent=True, summary="One of the caller's orders"
)
LIST: Operation[None, OrderPage] = Operation(
    "orders",
    "list",
    "GET",
    "/",
    None,
    OrderPage,
    Access.USER,
    idempotent=True,
    errors=(422,),
    summary="The caller's orders, newest first",
)
CANCEL: Operation[None, Order] = Operation(
    "orders",
    "cancel",
    "POST",
    "/{id}/cancel",
    None,
    Order,
    Access.USER,
    idempotent=True,
    status=202,
    errors=(404, 409),
    summary="Cancel one of the caller's PENDING orders (409 once payment capture has begun)",
)


class AdminOrderLine(msgspec.Struct, kw_only=True):
    sku: str
    quantity: int


class AdminOrder(msgspec.Struct, kw_only=True):
    id: str
    user_id: str
    status: OrderStatus
    total_cents: int
    cancel_reason: CancelReason | None
    items: list[AdminOrderLine]


class AdminOrderPage(msgspec.Struct, kw_only=True):
    items: list[AdminOrder]
    next_cursor: str | None


ADMIN_LIST: Operation[None, AdminOrderPage] = Operation(
    "orders",
    "admin_list",
    "GET",
    "/admin/orders",
    None,
    AdminOrderPage,
    Access.ADMIN,
    idempotent=True,
    errors=(422,),
    summary="Every order (limit <= 1000, cursor)",
)


ADMIN_OUTBOX = outbox_operation("orders")
