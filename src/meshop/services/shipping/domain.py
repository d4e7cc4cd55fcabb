"""Shipping's rules: what a shipment is, how it ends, and the undo that comes first.

A shipment is CREATED with the carrier's label, for one idempotency key; cancelling it
makes it CANCELLED, and cancelling again changes nothing. An undo that comes before its
create (`cancel-by-key`) leaves a tombstone: a CANCELLED shipment with no label, which a
late create with the same key finds and returns, cancelling the label it got.
"""

from __future__ import annotations

from typing import Any

import msgspec

from meshop.contracts.shipping import Shipment, ShipmentRequest
from meshop.mesh import Unprocessable
from meshop.services.shipping.providers import DestinationUnserved, Label


def new_shipment(key: str, request: ShipmentRequest, label: Label, *, shipment_id: str, now: str) -> dict[str, Any]:
    return {
        "id": shipment_id,
        "idempotency_key": key,
        "order_id": request.order_id,
        "status": "CREATED",
        "tracking_number": label.tracking_number,
        "carrier": label.carrier,
        "address": msgspec.json.encode(request.address).decode(),
        "updated_at": now,
    }


def tombstone(key: str, order_id: str, *, shipment_id: str, now: str) -> dict[str, Any]:
    """The row a cancel-by-key leaves when it comes before the create of `key`."""
    return {
        "id": shipment_id,
        "idempotency_key": key,
        "order_id": order_id,
        "status": "CANCELLED",
        "tracking_number": "",
        "carrier": "",
        "address": "{}",
        "updated_at": now,
    }


def cancelled(status: str) -> bool:
    return status == "CANCELLED"


def unserved(exc: DestinationUnserved) -> Unprocessable:
    """The carrier's refusal of an address, as the caller's error (422)."""
    return Unprocessable(str(exc), errors=[{"field": "address.country", "error": "unserved"}])


def shipment(row: Any) -> Shipment:
    return Shipment(
        id=row.id, order_id=row.order_id, status=row.status, tracking_number=row.tracking_number, carrier=row.carrier
    )
