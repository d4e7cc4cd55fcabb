"""The orders service: orders and the checkout that fulfils them."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from meshop.contracts.payments import EXAMPLE_CARD, Card
from meshop.contracts.shipping import EXAMPLE_ADDRESS, Address
from meshop.mesh import Access, EventType, Example, Operation, outbox_operation

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
    # Room for its own calls (catalog.lookup, 1 s a try; payments.tokenize, 0.75 s) to be
    # retried once on another replica, and still under a customer's usual 2.5 s patience.
    per_try_timeout_s=2.0,
)
GET: Operation[None, Order] = Operation(
    "orders",
    "get",
    "GET",
    "/{id}",
    None,
    Order,
    Access.USER,
    idempotent=True,
    summary="One of the caller's orders",
    per_try_timeout_s=1.0,
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
    per_try_timeout_s=1.0,
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


# Events (emitted in the transaction of the change they announce; see meshop.mesh.emit).

#: The customer an order event is counted against (an event naming nobody is dead-lettered).
UserId = Annotated[str, Meta(min_length=1)]


class OrderPlaced(msgspec.Struct, kw_only=True, frozen=True):
    """An order was accepted; its checkout saga starts."""

    order_id: str
    user_id: UserId
    total_cents: int
    items: list[OrderLine]


class OrderConfirmed(msgspec.Struct, kw_only=True, frozen=True):
    """An order's checkout completed: paid for, shipped, its stock committed."""

    order_id: str
    user_id: UserId
    total_cents: int
    cancel_reason: str | None = None  # always None; written since the first version


class OrderCancelled(msgspec.Struct, kw_only=True, frozen=True):
    """An order's checkout was compensated: nothing reserved, charged or shipped remains."""

    order_id: str
    user_id: UserId
    total_cents: int
    cancel_reason: str | None


ORDER_PLACED = EventType(source="orders", name="OrderPlaced", data=OrderPlaced)
ORDER_CONFIRMED = EventType(source="orders", name="OrderConfirmed", data=OrderConfirmed)
ORDER_CANCELLED = EventType(source="orders", name="OrderCancelled", data=OrderCancelled)

# What /docs and /openapi.json show for each operation (every one validates: tests/gateway).
_ID = "0b7e2c1a-54f3-4d2e-8a61-9f3b7c5d2e10"
_PLACED = HistoryEntry(at="2026-12-06T09:41:00.120000+00:00", event="PLACED")
_CONFIRMED = Order(
    id=_ID,
    status="CONFIRMED",
    items=[PricedLine(sku="KIT-001", quantity=2, name="Cast Iron Skillet", price_cents=4500)],
    total_cents=9000,
    currency="USD",
    payment=PaymentInfo(status="CAPTURED"),
    shipment=ShipmentInfo(tracking_number="SIM000004815162", carrier="simulated-post"),
    cancel_reason=None,
    history=[
        _PLACED,
        HistoryEntry(at="2026-12-06T09:41:00.150000+00:00", event="STOCK_RESERVED"),
        HistoryEntry(at="2026-12-06T09:41:00.170000+00:00", event="PAYMENT_AUTHORIZED"),
        HistoryEntry(at="2026-12-06T09:41:00.180000+00:00", event="SHIPMENT_CREATED"),
        HistoryEntry(at="2026-12-06T09:41:00.190000+00:00", event="PAYMENT_CAPTURED"),
        HistoryEntry(at="2026-12-06T09:41:00.200000+00:00", event="STOCK_COMMITTED"),
    ],
    created_at=_PLACED.at,
)
EXAMPLES: dict[Operation[Any, Any], Example] = {
    CREATE: Example(
        request=CreateOrder(
            items=[OrderLine(sku="KIT-001", quantity=2)], payment=EXAMPLE_CARD, shipping_address=EXAMPLE_ADDRESS
        ),
        response=OrderAccepted(id=_ID, status="PENDING"),
    ),
    GET: Example(response=_CONFIRMED, params={"id": _ID}),
    LIST: Example(response=OrderPage(items=[_CONFIRMED], next_cursor=None)),
    CANCEL: Example(  # accepted: the checkout compensates at its next step
        response=msgspec.structs.replace(
            _CONFIRMED, status="PENDING", payment=None, shipment=None, history=_CONFIRMED.history[:2]
        ),
        params={"id": _ID},
    ),
    ADMIN_LIST: Example(
        response=AdminOrderPage(
            items=[
                AdminOrder(
                    id=_ID,
                    user_id="5f0c8a52-3c1e-4f7b-9a57-0d3c2e7b91a4",
                    status="CONFIRMED",
                    total_cents=9000,
                    cancel_reason=None,
                    items=[AdminOrderLine(sku="KIT-001", quantity=2)],
                )
            ],
            next_cursor=None,
        )
    ),
}
