"""Inventory's operations: stock levels, reservations (reserve, release, commit), restocking."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import msgspec
import structlog
from sqlalchemy.exc import IntegrityError

from meshop.contracts import catalog
from meshop.contracts import inventory as contract
from meshop.mesh import (
    Conn,
    Database,
    MeshError,
    NotFound,
    ProblemError,
    RequestContext,
    ServiceClient,
    ServiceUnavailable,
    read_page,
)
from meshop.services.inventory import domain, store

log = structlog.get_logger("meshop.inventory")


class Inventory:
    """One method per operation of inventory's contract.

    `catalog_retry_after_s`: the Retry-After of a restock refused because the catalog did
    not answer (unless it said when).
    """

    def __init__(self, *, db: Database, client: ServiceClient, catalog_retry_after_s: float = 2.0) -> None:
        self._db = db
        self._client = client
        self._catalog_retry_after_s = catalog_retry_after_s

    async def get_stock(self, ctx: RequestContext, _body: None) -> contract.Stock:
        return await self._level(ctx.path_params["sku"][:40])

    async def reserve(self, ctx: RequestContext, body: contract.ReserveRequest) -> contract.Reservation:
        key = ctx.idempotency_key
        assert key is not None
        return await self._keyed(lambda conn: domain.reserve(conn, key, body))

    async def release_by_key(self, ctx: RequestContext, body: contract.UndoRequest) -> contract.Reservation:
        key = ctx.idempotency_key
        assert key is not None
        return await self._keyed(lambda conn: domain.release_by_key(conn, key, body.order_id))

    async def release(self, ctx: RequestContext, _body: None) -> contract.Reservation:
        async with self._db.begin() as conn:
            return await domain.release(conn, ctx.path_params["id"])

    async def commit(self, ctx: RequestContext, _body: None) -> contract.Reservation:
        async with self._db.begin() as conn:
            return await domain.commit(conn, ctx.path_params["id"])

    async def admin_stock(self, ctx: RequestContext, _body: None) -> contract.AdminStockPage:
        items, cursor = await read_page(ctx, self._db, store.stock, store.stock.c.sku, store.to_admin_stock)
        return contract.AdminStockPage(items=items, next_cursor=cursor)

    async def admin_reservations(self, ctx: RequestContext, _body: None) -> contract.AdminReservationPage:
        items, cursor = await read_page(
            ctx, self._db, store.reservations, store.reservations.c.id, store.to_admin_reservation
        )
        return contract.AdminReservationPage(items=items, next_cursor=cursor)

    async def restock(self, ctx: RequestContext, body: contract.RestockRequest) -> contract.Stock:
        sku = ctx.path_params["sku"]
        if not await self._in_catalog(sku, ctx.deadline):
            raise NotFound(f"the catalog has no product with SKU {sku[:40]!r}")
        async with self._db.begin() as conn:
            await store.add_sku(conn, sku)
            await store.adjust(conn, sku, available=body.quantity)
        return await self._level(sku)

    async def _level(self, sku: str) -> contract.Stock:
        async with self._db.read() as conn:
            row = (await store.stock_of(conn, [sku])).get(sku)
        if row is None:
            raise NotFound(f"no stock record for SKU {sku!r}")
        return contract.Stock(sku=row.sku, available=row.available, reserved=row.reserved)

    async def _keyed(self, change: Callable[[Conn], Awaitable[contract.Reservation]]) -> contract.Reservation:
        """Run a change that inserts the reservation of a key; a concurrent insert of the
        same key (PostgreSQL) loses, and the change runs again to see the winner's row."""
        try:
            async with self._db.begin() as conn:
                return await change(conn)
        except IntegrityError:
            async with self._db.begin() as conn:
                return await change(conn)

    async def _in_catalog(self, sku: str, deadline: float | None) -> bool:
        """Whether the catalog, which owns SKUs, has a product with this one.

        Asked before anything changes: when the catalog cannot answer, the restock is
        refused with 503 and Retry-After, never accepted for a SKU nobody sells.
        """
        try:
            msgspec.convert(sku, catalog.Sku)
        except msgspec.ValidationError:
            return False  # not a SKU the catalog could hold: no need to ask
        try:
            found = await self._client.call(catalog.LOOKUP, catalog.LookupRequest(skus=[sku]), deadline=deadline)
        except MeshError as exc:
            log.warning("catalog lookup failed; restock refused", sku=sku, error=repr(exc))
            retry_after_s = exc.retry_after_s if isinstance(exc, ProblemError) else None
            raise ServiceUnavailable(
                "the catalog cannot confirm this SKU now; nothing was restocked",
                retry_after_s=retry_after_s or self._catalog_retry_after_s,
            ) from None
        return any(product.sku == sku for product in found.items)
