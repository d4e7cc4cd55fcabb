"""Shipping's events: a shipment created or cancelled. It consumes none."""

from __future__ import annotations

from meshop.contracts.shipping import SHIPMENT_CANCELLED, SHIPMENT_CREATED, ShipmentCancelled, ShipmentCreated
from meshop.mesh import Conn, emit


async def shipment_created(conn: Conn, *, shipment_id: str, order_id: str, tracking_number: str) -> None:
    data = ShipmentCreated(shipment_id=shipment_id, order_id=order_id, tracking_number=tracking_number)
    await emit(conn, SHIPMENT_CREATED, data)


async def shipment_cancelled(conn: Conn, *, shipment_id: str, order_id: str, tracking_number: str) -> None:
    data = ShipmentCancelled(shipment_id=shipment_id, order_id=order_id, tracking_number=tracking_number)
    await emit(conn, SHIPMENT_CANCELLED, data)
