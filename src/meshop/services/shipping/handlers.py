"""Shipping's operations: quotes, shipments, cancellations (also by key)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.exc import IntegrityError

from meshop.contracts import shipping as contract
from meshop.mesh import Database, NotFound, RequestContext, insert_unless_present, read_page
from meshop.services.shipping import domain, events, store
from meshop.services.shipping.providers import Carrier, DestinationUnserved


def _now() -> str:
    return datetime.now(UTC).isoformat()


class Shipping:
    """One method per operation of shipping's contract, with `carrier`."""

    def __init__(self, *, db: Database, carrier: Carrier) -> None:
        self._db = db
        self._carrier = carrier

    async def quote(self, _ctx: RequestContext, body: contract.QuoteRequest) -> contract.Quote:
        try:
            price, eta = self._carrier.quote(body.address, body.items)
        except DestinationUnserved as exc:
            raise domain.unserved(exc) from None
        return contract.Quote(carrier=self._carrier.name, price_cents=price, eta_days=eta)

    async def create(self, ctx: RequestContext, body: contract.ShipmentRequest) -> contract.Shipment:
        key = ctx.idempotency_key
        assert key is not None
        async with self._db.read() as conn:
            existing = await store.by_key(conn, key)
        if existing is not None:
            return domain.shipment(existing)
        try:
            label = await self._carrier.create(body.address, body.items, key=key)
        except DestinationUnserved as exc:
            raise domain.unserved(exc) from None
        shipment_id = uuid.uuid4().hex
        row = domain.new_shipment(key, body, label, shipment_id=shipment_id, now=_now())
        try:
            async with self._db.begin() as conn:
                await store.insert(conn, row)
                await events.shipment_created(
                    conn, shipment_id=shipment_id, order_id=body.order_id, tracking_number=label.tracking_number
                )
        except IntegrityError:  # a concurrent call with the same key won, or a cancel-by-key
            async with self._db.read() as conn:
                winner = await store.by_key(conn, key)
            if winner.tracking_number != label.tracking_number:  # our label is not needed
                await self._carrier.cancel(label.tracking_number, key=f"{key}:late")
            return domain.shipment(winner)
        return domain.shipment(store.written(row))  # as committed: no read back

    async def cancel(self, ctx: RequestContext, _body: None) -> contract.Shipment:
        async with self._db.read() as conn:
            row = await store.by_id(conn, ctx.path_params["id"][:64])
        if row is None:
            raise NotFound("no such shipment")
        return await self._cancelled(row)

    async def cancel_by_key(self, ctx: RequestContext, body: contract.UndoRequest) -> contract.Shipment:
        """Cancel what `create` did with this key; if it has not run yet, it never will."""
        key = ctx.idempotency_key
        assert key is not None
        tombstone = domain.tombstone(key, body.order_id, shipment_id=uuid.uuid4().hex, now=_now())
        # If the shipment landed meanwhile, its row is returned and cancelled below.
        row = await insert_unless_present(
            self._db, store.shipments, store.shipments.c.idempotency_key == key, tombstone
        )
        return await self._cancelled(row)

    async def admin_shipments(self, ctx: RequestContext, _body: None) -> contract.AdminShipmentPage:
        items, cursor = await read_page(ctx, self._db, store.shipments, store.shipments.c.id, store.to_admin_shipment)
        return contract.AdminShipmentPage(items=items, next_cursor=cursor)

    async def _cancelled(self, row: Any) -> contract.Shipment:
        """`row` cancelled with the carrier and here (cancelling twice changes nothing)."""
        if not domain.cancelled(row.status):
            await self._carrier.cancel(row.tracking_number, key=f"{row.id}:cancel")
            async with self._db.begin() as conn:
                # Conditional: of two concurrent cancellations only one emits the event.
                if await store.cancel(conn, row.id, _now()):
                    await events.shipment_cancelled(
                        conn, shipment_id=row.id, order_id=row.order_id, tracking_number=row.tracking_number
                    )
                row = await store.by_id(conn, row.id)
        return domain.shipment(row)
