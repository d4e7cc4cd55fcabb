"""The shipping database: shipments keyed by idempotency key."""

from __future__ import annotations

from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any

import sqlalchemy as sa

from meshop.contracts.shipping import AdminShipment
from meshop.mesh import Conn

metadata = sa.MetaData()

shipments = sa.Table(
    "shipments",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("idempotency_key", sa.String(200), nullable=False, unique=True),
    sa.Column("order_id", sa.String(64), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("tracking_number", sa.String(40), nullable=False),
    sa.Column("carrier", sa.String(40), nullable=False),
    sa.Column("address", sa.Text, nullable=False),
    sa.Column("updated_at", sa.String(40), nullable=False),
)


# The statements a checkout runs, built once (docs/decisions/0032): their values are
# parameters, so SQLAlchemy neither coerces arguments nor generates a cache key per call.
_BY_KEY = sa.select(shipments).where(shipments.c.idempotency_key == sa.bindparam("b_key"))
_INSERT = shipments.insert()


async def by_key(conn: Conn, key: str) -> Any:
    return (await conn.execute(_BY_KEY, {"b_key": key})).first()


async def by_id(conn: Conn, shipment_id: str) -> Any:
    return (await conn.execute(sa.select(shipments).where(shipments.c.id == shipment_id))).first()


def to_admin_shipment(row: Any) -> AdminShipment:
    return AdminShipment(order_id=row.order_id, status=row.status, tracking_number=row.tracking_number)


async def insert(conn: Conn, row: dict[str, Any]) -> None:
    await conn.execute(_INSERT, row)


def written(values: Mapping[str, Any]) -> Any:
    """A shipment's row as this transaction wrote it (`values`: every column), without reading it back."""
    return SimpleNamespace(**values)


async def cancel(conn: Conn, shipment_id: str, updated_at: str) -> bool:
    """Mark the shipment CANCELLED; False if it already was (another request got there first)."""
    changed = await conn.execute(
        shipments.update()
        .where(shipments.c.id == shipment_id, shipments.c.status != "CANCELLED")
        .values(status="CANCELLED", updated_at=updated_at)
    )
    return bool(changed.rowcount == 1)
