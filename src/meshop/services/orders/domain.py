"""The orders' rules: how an order is priced, what a repeated request gets, and checkout.

Pricing: every SKU must be in the catalog, all of one currency; the total is the sum of
the lines at the catalog's prices when the order is placed. A request repeated with its
Idempotency-Key gets the first answer again; the same key with another request is a
conflict.

Checkout as a saga: reserve → authorize → ship → capture (pivot) → commit → confirm.

Each step calls another service with the idempotency key `<order id>:<step>`, so a
resumed or retried step has one effect. A decline, missing stock or an unserved address
compensates what was done (release, void, cancel shipment) and cancels the order.

Steps write nothing themselves: they note their outcome in the saga's data, and the
saga log projects it onto the order row in the same transaction that records the step.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec

from meshop.contracts import inventory, payments, shipping
from meshop.contracts.catalog import Product
from meshop.contracts.inventory import Line, ReserveRequest
from meshop.contracts.orders import OrderAccepted, OrderLine, PricedLine
from meshop.contracts.payments import AuthorizeRequest
from meshop.contracts.shipping import Address, Parcel, ShipmentRequest
from meshop.mesh import Conflict, Conn, Saga, SagaState, SagaStatus, ServiceClient, Step, StepFailed, Unprocessable
from meshop.services.orders import events, store

ORDER_STATUS = {SagaStatus.COMPLETED: "CONFIRMED", SagaStatus.COMPENSATED: "CANCELLED"}


@dataclass(frozen=True, slots=True)
class Priced:
    lines: list[PricedLine]
    total_cents: int
    currency: str


def price(items: list[OrderLine], products: list[Product]) -> Priced:
    """`items` at the catalog's prices (`products`: what the catalog found of their SKUs)."""
    by_sku = {p.sku: p for p in products}
    unknown = sorted({i.sku for i in items} - by_sku.keys())
    if unknown:
        raise Unprocessable(
            f"unknown SKU: {', '.join(unknown)}",
            errors=[{"field": "items", "error": "unknown_sku", "skus": unknown}],
        )
    currencies = {by_sku[i.sku].currency for i in items}
    if len(currencies) != 1:
        raise Unprocessable("all items of an order must have the same currency")
    lines = [
        PricedLine(sku=i.sku, quantity=i.quantity, name=by_sku[i.sku].name, price_cents=by_sku[i.sku].price_cents)
        for i in items
    ]
    return Priced(
        lines=lines, total_cents=sum(line.price_cents * line.quantity for line in lines), currency=currencies.pop()
    )


def accepted_again(row: Any, request_hash: str) -> OrderAccepted:
    """The answer to a request repeated with the Idempotency-Key of order `row`."""
    if row.request_hash != request_hash:
        raise Conflict("this Idempotency-Key was used with a different request")
    return OrderAccepted(id=row.id, status=row.status)


def note(state: SagaState, event: str, detail: str | None = None, **fields: Any) -> None:
    """Record a step's outcome: an entry in the order's history and changed order fields."""
    history: list[dict[str, Any]] = state.data.setdefault("history", [])
    if not any(entry["event"] == event for entry in history):  # a resumed step notes once
        history.append({"at": datetime.now(UTC).isoformat(), "event": event, "detail": detail})
    state.data.setdefault("order", {}).update(fields)


async def project(conn: Conn, state: SagaState) -> None:
    """Mirror the checkout saga's progress onto its order (same transaction).

    When the order reaches its end, OrderConfirmed or OrderCancelled goes into the
    outbox in that same transaction.
    """
    values: dict[str, Any] = dict(state.data.get("order", {}))
    values["history"] = msgspec.json.encode(state.data.get("history", [])).decode()
    if state.status in ORDER_STATUS:
        values["status"] = ORDER_STATUS[state.status]
        if state.status is SagaStatus.COMPENSATED:
            values["cancel_reason"] = state.reason
        order = {"order_id": state.saga_id, "user_id": state.data["user_id"], "total_cents": state.data["total_cents"]}
        if state.status is SagaStatus.COMPLETED:
            await events.order_confirmed(conn, **order)
        else:
            await events.order_cancelled(conn, **order, reason=state.reason)
    await store.update(conn, state.saga_id, values)


def checkout_saga(client: ServiceClient) -> Saga:
    """The checkout saga, calling the other services through `client`."""

    def lines(state: SagaState) -> list[Line]:
        return [Line(sku=i["sku"], quantity=i["quantity"]) for i in state.data["items"]]

    async def reserve(state: SagaState) -> None:
        request = ReserveRequest(order_id=state.saga_id, items=lines(state))
        result = await client.call(inventory.RESERVE, request, idempotency_key=state.key("reserve"))
        state.data["reservation_id"] = result.id
        if result.status == "REJECTED":
            raise StepFailed("OUT_OF_STOCK", result.reason)
        note(state, "STOCK_RESERVED")

    # Compensations undo by the forward step's key, not by what its answer said: a step
    # that timed out may have happened without our knowing, or may still happen. Undoing
    # by key covers both (the participant leaves a tombstone when there is nothing yet).
    async def release(state: SagaState) -> None:
        released = await client.call(
            inventory.RELEASE_BY_KEY,
            inventory.UndoRequest(order_id=state.saga_id),
            idempotency_key=state.key("reserve"),
        )
        if released.items:
            note(state, "STOCK_RELEASED")

    async def authorize(state: SagaState) -> None:
        request = AuthorizeRequest(
            order_id=state.saga_id,
            payment_method=state.data["payment_method"],
            amount_cents=state.data["total_cents"],
            currency=state.data["currency"],
        )
        payment = await client.call(payments.AUTHORIZE, request, idempotency_key=state.key("authorize"))
        state.data["payment_id"] = payment.id
        if payment.status == "DECLINED":
            note(state, "PAYMENT_DECLINED", payment.decline_reason, payment_status="DECLINED")
            raise StepFailed("PAYMENT_DECLINED", payment.decline_reason)
        note(state, "PAYMENT_AUTHORIZED", payment_status=payment.status)

    async def void(state: SagaState) -> None:
        payment = await client.call(
            payments.VOID_BY_KEY, payments.UndoRequest(order_id=state.saga_id), idempotency_key=state.key("authorize")
        )
        if payment.amount_cents:
            note(state, "PAYMENT_VOIDED", payment_status=payment.status)

    async def ship(state: SagaState) -> None:
        address = msgspec.convert(state.data["address"], Address)
        parcels = [Parcel(sku=line.sku, quantity=line.quantity) for line in lines(state)]
        request = ShipmentRequest(order_id=state.saga_id, address=address, items=parcels)
        try:
            shipment = await client.call(shipping.CREATE, request, idempotency_key=state.key("ship"))
        except Unprocessable as exc:
            raise StepFailed("SHIPPING_UNAVAILABLE", exc.detail) from None
        state.data["shipment_id"] = shipment.id
        note(state, "SHIPMENT_CREATED", tracking_number=shipment.tracking_number, carrier=shipment.carrier)

    async def cancel_shipment(state: SagaState) -> None:
        shipment = await client.call(
            shipping.CANCEL_BY_KEY, shipping.UndoRequest(order_id=state.saga_id), idempotency_key=state.key("ship")
        )
        if shipment.tracking_number:
            note(state, "SHIPMENT_CANCELLED", tracking_number=None, carrier=None)

    async def capture(state: SagaState) -> None:
        payment = await client.call(payments.CAPTURE, path_params={"id": state.data["payment_id"]})
        note(state, "PAYMENT_CAPTURED", payment_status=payment.status)

    async def commit(state: SagaState) -> None:
        await client.call(inventory.COMMIT, path_params={"id": state.data["reservation_id"]})
        note(state, "STOCK_COMMITTED")

    async def confirmed(state: SagaState) -> None:
        note(state, "CONFIRMED")

    async def cancelled(state: SagaState) -> None:
        note(state, "CANCELLED", state.reason)

    return Saga(
        name="checkout",
        steps=[
            Step("reserve", reserve, release, failure_reason="OUT_OF_STOCK"),
            Step("authorize", authorize, void, failure_reason="PAYMENT_FAILED", exhausted_reason="PAYMENT_FAILED"),
            Step("ship", ship, cancel_shipment, failure_reason="SHIPPING_UNAVAILABLE"),
            Step("capture", capture, pivot=True),
            Step("commit", commit),
        ],
        on_completed=confirmed,
        on_compensated=cancelled,
    )
