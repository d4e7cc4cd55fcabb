"""The shipping database: shipments keyed by idempotency key."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

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


async def by_key(conn: Conn, key: str) -> Any:
    return (await conn.execute(sa.select(shipments).where(shipments.c.idempotency_key == key))).first()


async def by_id(conn: Conn, shipment_id: str) -> Any:
    return (await conn.execute(sa.select(shipments).where(shipments.c.id == shipment_id))).first()
