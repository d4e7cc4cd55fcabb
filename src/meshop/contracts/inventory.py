"""The inventory service: stock levels and reservations."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from meshop.mesh import Access, EventType, Example, Operation, outbox_operation

Quantity = Annotated[int, Meta(ge=1, le=1000)]


class Stock(msgspec.Struct, kw_only=True):
    sku: str
    available: int
    reserved: int


class Line(msgspec.Struct, kw_only=True):
    sku: Annotated[str, Meta(min_length=1, max_length=40)]
    quantity: Quantity


class ReserveRequest(msgspec.Struct, kw_only=True):
    order_id: Annotated[str, Meta(min_length=1, max_length=64)]
    items: Annotated[list[Line], Meta(min_length=1, max_length=100)]


ReservationStatus = Literal["RESERVED", "REJECTED", "RELEASED", "COMMITTED"]


class ReservedLine(msgspec.Struct, kw_only=True):
    """A reserved SKU: the order's lines for it summed (so without the per-line limit)."""

    sku: str
    quantity: int


class Reservation(msgspec.Struct, kw_only=True):
    id: str
    order_id: str
    status: ReservationStatus
    items: list[ReservedLine]
    reason: str | None = None


class RestockRequest(msgspec.Struct, kw_only=True):
    quantity: Annotated[int, Meta(ge=1, le=1_000_000)]


GET_STOCK: Operation[None, Stock] = Operation(
    "inventory",
    "stock",
    "GET",
    "/stock/{sku}",
    None,
    Stock,
    Access.PUBLIC,
    idempotent=True,
    summary="Stock of one SKU",
    per_try_timeout_s=1.0,
)
RESERVE = Operation(
    "inventory",
    "reserve",
    "POST",
    "/internal/reservations",
    ReserveRequest,
    Reservation,
    requires_key=True,
    summary="Reserve stock for an order (all lines or none)",
    callers=("orders",),
)
RELEASE: Operation[None, Reservation] = Operation(
    "inventory",
    "release",
    "POST",
    "/internal/reservations/{id}/release",
    None,
    Reservation,
    idempotent=True,
    errors=(404, 409),
    summary="Return reserved stock",
    callers=("orders",),
)


class UndoRequest(msgspec.Struct, kw_only=True):
    """Undo by the forward step's idempotency key: the effect may not exist yet, or ever."""

    order_id: Annotated[str, Meta(min_length=1, max_length=64)]


RELEASE_BY_KEY: Operation[UndoRequest, Reservation] = Operation(
    "inventory",
    "release_by_key",
    "POST",
    "/internal/reservations/release-by-key",
    UndoRequest,
    Reservation,
    requires_key=True,
    idempotent=True,
    errors=(409,),
    summary="Release the reservation made with this Idempotency-Key; if none exists yet, none ever will",
    callers=("orders",),
)
COMMIT: Operation[None, Reservation] = Operation(
    "inventory",
    "commit",
    "POST",
    "/internal/reservations/{id}/commit",
    None,
    Reservation,
    idempotent=True,
    errors=(404, 409),
    summary="Make a reservation final",
    callers=("orders",),
)
RESTOCK = Operation(
    "inventory",
    "restock",
    "POST",
    "/admin/stock/{sku}/restock",
    RestockRequest,
    Stock,
    Access.ADMIN,
    summary="Add stock of a SKU the catalog sells (404 for any other; 503 while the catalog cannot say)",
)


class AdminStock(msgspec.Struct, kw_only=True):
    sku: str
    available: int
    reserved: int
    committed: int


class AdminStockPage(msgspec.Struct, kw_only=True):
    items: list[AdminStock]
    next_cursor: str | None


ADMIN_STOCK: Operation[None, AdminStockPage] = Operation(
    "inventory",
    "admin_stock",
    "GET",
    "/admin/stock",
    None,
    AdminStockPage,
    Access.ADMIN,
    idempotent=True,
    errors=(422,),
    summary="Stock of every SKU (limit <= 1000, cursor)",
)

ADMIN_OUTBOX = outbox_operation("inventory")


# Events (emitted in the transaction of the change they announce; see meshop.mesh.emit).


class StockReserved(msgspec.Struct, kw_only=True, frozen=True):
    """A reservation took its lines' stock from available to reserved."""

    reservation_id: str
    order_id: str
    items: list[ReservedLine]


class StockReleased(msgspec.Struct, kw_only=True, frozen=True):
    """A reservation gave its stock back (reserved to available)."""

    reservation_id: str
    order_id: str
    items: list[ReservedLine]


class StockCommitted(msgspec.Struct, kw_only=True, frozen=True):
    """A reservation's stock is sold for good (reserved to committed)."""

    reservation_id: str
    order_id: str
    items: list[ReservedLine]


STOCK_RESERVED = EventType(source="inventory", name="StockReserved", data=StockReserved)
STOCK_RELEASED = EventType(source="inventory", name="StockReleased", data=StockReleased)
STOCK_COMMITTED = EventType(source="inventory", name="StockCommitted", data=StockCommitted)


class AdminReservation(msgspec.Struct, kw_only=True):
    order_id: str
    status: ReservationStatus
    items: list[ReservedLine]


class AdminReservationPage(msgspec.Struct, kw_only=True):
    items: list[AdminReservation]
    next_cursor: str | None


ADMIN_RESERVATIONS: Operation[None, AdminReservationPage] = Operation(
    "inventory",
    "admin_reservations",
    "GET",
    "/admin/reservations",
    None,
    AdminReservationPage,
    Access.ADMIN,
    idempotent=True,
    errors=(422,),
    summary="Every reservation and what became of it (limit <= 1000, cursor)",
)


# What /docs and /openapi.json show for each operation (every one validates: tests/gateway).
_LINES = [ReservedLine(sku="KIT-001", quantity=2)]
EXAMPLES: dict[Operation[Any, Any], Example] = {
    GET_STOCK: Example(response=Stock(sku="KIT-001", available=998, reserved=2), params={"sku": "KIT-001"}),
    RESTOCK: Example(
        request=RestockRequest(quantity=50),
        response=Stock(sku="KIT-001", available=1048, reserved=2),
        params={"sku": "KIT-001"},
    ),
    ADMIN_STOCK: Example(
        response=AdminStockPage(
            items=[AdminStock(sku="KIT-001", available=998, reserved=2, committed=4)], next_cursor="KIT-001"
        )
    ),
    ADMIN_RESERVATIONS: Example(
        response=AdminReservationPage(
            items=[AdminReservation(order_id="0b7e2c1a-54f3-4d2e-8a61-9f3b7c5d2e10", status="COMMITTED", items=_LINES)],
            next_cursor=None,
        )
    ),
}
