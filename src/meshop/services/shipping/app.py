"""The shipping service: quotes, shipments, cancellations."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
from sqlalchemy.exc import IntegrityError

from meshop.contracts import shipping as contract
from meshop.contracts.users import remote_verifier
from meshop.mesh import (
    Api,
    NotFound,
    RequestContext,
    Runtime,
    ServiceDefinition,
    Unprocessable,
    insert_unless_present,
    read_page,
)
from meshop.services.shipping import events, store
from meshop.services.shipping.domain import Carrier, DestinationUnserved, SimulatedCarrier


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _shipment(row: Any) -> contract.Shipment:
    return contract.Shipment(
        id=row.id, order_id=row.order_id, status=row.status, tracking_number=row.tracking_number, carrier=row.carrier
    )


def _unserved(exc: DestinationUnserved) -> Unprocessable:
    return Unprocessable(str(exc), errors=[{"field": "address.country", "error": "unserved"}])


async def build(runtime: Runtime, carrier: Carrier | None = None) -> Api:
    db = runtime.database
    carrier = carrier or SimulatedCarrier()
    api = Api("shipping", max_body_bytes=runtime.settings.max_body_bytes)

    @api.implement(contract.QUOTE)
    async def quote(_ctx: RequestContext, body: contract.QuoteRequest) -> contract.Quote:
        try:
            price, eta = carrier.quote(body.address, body.items)
        except DestinationUnserved as exc:
            raise _unserved(exc) from None
        return contract.Quote(carrier=carrier.name, price_cents=price, eta_days=eta)

    @api.implement(contract.CREATE)
    async def create(ctx: RequestContext, body: contract.ShipmentRequest) -> contract.Shipment:
        key = ctx.idempotency_key
        assert key is not None
        async with db.read() as conn:
            existing = await store.by_key(conn, key)
        if existing is not None:
            return _shipment(existing)
        try:
            label = await carrier.create(body.address, body.items, key=key)
        except DestinationUnserved as exc:
            raise _unserved(exc) from None
        row = {
            "id": uuid.uuid4().hex,
            "idempotency_key": key,
            "order_id": body.order_id,
            "status": "CREATED",
            "tracking_number": label.tracking_number,
            "carrier": label.carrier,
            "address": msgspec.json.encode(body.address).decode(),
            "updated_at": _now(),
        }
        try:
            async with db.begin() as conn:
                await conn.execute(store.shipments.insert().values(**row))
                await events.shipment_created(
                    conn, shipment_id=row["id"], order_id=body.order_id, tracking_number=label.tracking_number
                )
        except IntegrityError:  # a concurrent call with the same key won, or a cancel-by-key
            async with db.read() as conn:
                winner = await store.by_key(conn, key)
            if winner.tracking_number != label.tracking_number:  # our label is not needed
                await carrier.cancel(label.tracking_number, key=f"{key}:late")
            return _shipment(winner)
        async with db.read() as conn:
            return _shipment(await store.by_key(conn, key))

    async def cancelled(row: Any) -> contract.Shipment:
        """`row` cancelled with the carrier and here (cancelling twice changes nothing)."""
        shipment_id = row.id
        if row.status != "CANCELLED":
            await carrier.cancel(row.tracking_number, key=f"{shipment_id}:cancel")
            async with db.begin() as conn:
                # Conditional: of two concurrent cancellations only one emits the event.
                changed = await conn.execute(
                    store.shipments.update()
                    .where(store.shipments.c.id == shipment_id, store.shipments.c.status != "CANCELLED")
                    .values(status="CANCELLED", updated_at=_now())
                )
                if changed.rowcount == 1:
                    await events.shipment_cancelled(
                        conn, shipment_id=shipment_id, order_id=row.order_id, tracking_number=row.tracking_number
                    )
                row = await store.by_id(conn, shipment_id)
        return _shipment(row)

    @api.implement(contract.CANCEL)
    async def cancel(ctx: RequestContext, _body: None) -> contract.Shipment:
        async with db.read() as conn:
            row = await store.by_id(conn, ctx.path_params["id"][:64])
        if row is None:
            raise NotFound("no such shipment")
        return await cancelled(row)

    @api.implement(contract.CANCEL_BY_KEY)
    async def cancel_by_key(ctx: RequestContext, body: contract.UndoRequest) -> contract.Shipment:
        """Cancel what `create` did with this key; if it has not run yet, it never will."""
        key = ctx.idempotency_key
        assert key is not None
        tombstone = {
            "id": uuid.uuid4().hex,
            "idempotency_key": key,
            "order_id": body.order_id,
            "status": "CANCELLED",
            "tracking_number": "",
            "carrier": "",
            "address": "{}",
            "updated_at": _now(),
        }
        # If the shipment landed meanwhile, its row is returned and cancelled below.
        row = await insert_unless_present(db, store.shipments, store.shipments.c.idempotency_key == key, tombstone)
        return await cancelled(row)

    @api.implement(contract.ADMIN_SHIPMENTS)
    async def admin_shipments(ctx: RequestContext, _body: None) -> contract.AdminShipmentPage:
        items, cursor = await read_page(
            ctx,
            db,
            store.shipments,
            store.shipments.c.id,
            lambda r: contract.AdminShipment(order_id=r.order_id, status=r.status, tracking_number=r.tracking_number),
        )
        return contract.AdminShipmentPage(items=items, next_cursor=cursor)

    return api


DEFINITION = ServiceDefinition(
    name="shipping",
    build=build,
    migrations=Path(__file__).parent / "migrations",
    verifier=remote_verifier,
    outbox=True,
)
