"""Checkout as a saga: reserve → authorize → ship → capture (pivot) → commit → confirm.

Each step calls another service with the idempotency key `<order id>:<step>`, so a
resumed or retried step has one effect. A decline, missing stock or an unserved address
compensates what was done (release, void, cancel shipment) and cancels the order.
"""

from __future__ import annotations

import msgspec

from meshop.contracts import inventory, payments, shipping
from meshop.contracts.inventory import Line, ReserveRequest
from meshop.contracts.payments import AuthorizeRequest
from meshop.contracts.shipping import Address, Parcel, ShipmentRequest
from meshop.mesh.client import ServiceClient
from meshop.mesh.errors import Unprocessable
from meshop.mesh.saga import Saga, SagaState, Step, StepFailed
from meshop.mesh.store import Database
from meshop.services.orders import store


def checkout_saga(client: ServiceClient, db: Database) -> Saga:
    """The checkout saga over `client`, recording progress on orders in `db`."""

    async def record(state: SagaState, event: str, detail: str | None = None, **values: object) -> None:
        async with db.begin() as conn:
            await store.update(conn, state.saga_id, event=event, detail=detail, **values)

    def lines(state: SagaState) -> list[Line]:
        return [Line(sku=i["sku"], quantity=i["quantity"]) for i in state.data["items"]]

    async def reserve(state: SagaState) -> None:
        result = await client.call(
            inventory.RESERVE,
            ReserveRequest(order_id=state.saga_id, items=lines(state)),
            idempotency_key=state.key("reserve"),
        )
        state.data["reservation_id"] = result.id
        if result.status == "REJECTED":
            raise StepFailed("OUT_OF_STOCK", result.reason)
        await record(state, "STOCK_RESERVED")

    async def release(state: SagaState) -> None:
        if "reservation_id" in state.data:
            await client.call(inventory.RELEASE, path_params={"id": state.data["reservation_id"]})
            await record(state, "STOCK_RELEASED")

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
            await record(state, "PAYMENT_DECLINED", payment.decline_reason, payment_status="DECLINED")
            raise StepFailed("PAYMENT_DECLINED", payment.decline_reason)
        await record(state, "PAYMENT_AUTHORIZED", payment_status=payment.status)

    async def void(state: SagaState) -> None:
        if "payment_id" in state.data:
            payment = await client.call(payments.VOID, path_params={"id": state.data["payment_id"]})
            await record(state, "PAYMENT_VOIDED", payment_status=payment.status)

    async def ship(state: SagaState) -> None:
        address = msgspec.convert(state.data["address"], Address)
        parcels = [Parcel(sku=line.sku, quantity=line.quantity) for line in lines(state)]
        try:
            shipment = await client.call(
                shipping.CREATE,
                ShipmentRequest(order_id=state.saga_id, address=address, items=parcels),
                idempotency_key=state.key("ship"),
            )
        except Unprocessable as exc:
            raise StepFailed("SHIPPING_UNAVAILABLE", exc.detail) from None
        state.data["shipment_id"] = shipment.id
        await record(state, "SHIPMENT_CREATED", tracking_number=shipment.tracking_number, carrier=shipment.carrier)

    async def cancel_shipment(state: SagaState) -> None:
        if "shipment_id" in state.data:
            await client.call(shipping.CANCEL, path_params={"id": state.data["shipment_id"]})
            await record(state, "SHIPMENT_CANCELLED", tracking_number=None, carrier=None)

    async def capture(state: SagaState) -> None:
        payment = await client.call(payments.CAPTURE, path_params={"id": state.data["payment_id"]})
        await record(state, "PAYMENT_CAPTURED", payment_status=payment.status)

    async def commit(state: SagaState) -> None:
        await client.call(inventory.COMMIT, path_params={"id": state.data["reservation_id"]})
        await record(state, "STOCK_COMMITTED")

    async def confirmed(state: SagaState) -> None:
        await record(state, "CONFIRMED", status="CONFIRMED")

    async def cancelled(state: SagaState) -> None:
        await record(state, "CANCELLED", state.reason, status="CANCELLED", cancel_reason=state.reason)

    return Saga(
        name="checkout",
        steps=[
            Step("reserve", reserve, release, failure_reason="OUT_OF_STOCK"),
            Step("authorize", authorize, void, failure_reason="PAYMENT_FAILED"),
            Step("ship", ship, cancel_shipment, failure_reason="SHIPPING_UNAVAILABLE"),
            Step("capture", capture, pivot=True),
            Step("commit", commit),
        ],
        on_completed=confirmed,
        on_compensated=cancelled,
    )
