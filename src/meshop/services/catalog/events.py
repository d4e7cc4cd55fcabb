"""The catalog's events: ProductUpdated, emitted with the change it announces. It consumes none."""

from __future__ import annotations

from typing import Any

from meshop.contracts.catalog import PRODUCT_UPDATED, ProductUpdated
from meshop.mesh import Conn, emit


async def product_updated(conn: Conn, row: dict[str, Any]) -> None:
    """A product was created or changed (`row`: its state after), in the change's transaction."""
    data = ProductUpdated(
        id=row["id"],
        sku=row["sku"],
        name=row["name"],
        price_cents=row["price_cents"],
        currency=row["currency"],
        category=row["category"],
    )
    await emit(conn, PRODUCT_UPDATED, data)
