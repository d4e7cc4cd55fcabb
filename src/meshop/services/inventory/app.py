"""The inventory service: stock levels, reservations, restocking."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import msgspec
import sqlalchemy as sa
import structlog
from sqlalchemy.exc import IntegrityError

from meshop.contracts import catalog
from meshop.contracts import inventory as contract
from meshop.contracts.seed import seed_stock
from meshop.contracts.users import remote_verifier
from meshop.mesh import (
    Api,
    Conn,
    MeshError,
    NotFound,
    ProblemError,
    RequestContext,
    Runtime,
    ServiceDefinition,
    ServiceUnavailable,
    read_page,
)
from meshop.services.inventory import domain, store

log = structlog.get_logger("meshop.inventory")

#: Retry-After of a restock refused because the catalog did not answer (unless it said when).
CATALOG_RETRY_AFTER_S = 2.0


async def initialize(runtime: Runtime) -> None:
    """Seed stock for the catalog's SKUs, once."""
    async with runtime.database.begin() as conn:
        if not await conn.scalar(sa.select(sa.func.count()).select_from(store.stock)):
            rows = [{"sku": sku, "available": qty, "reserved": 0, "committed": 0} for sku, qty in seed_stock().items()]
            await conn.execute(store.stock.insert(), rows)


async def build(runtime: Runtime) -> Api:
    db = runtime.database
    api = Api("inventory", max_body_bytes=runtime.settings.max_body_bytes)

    async def level(sku: str) -> contract.Stock:
        async with db.read() as conn:
            row = (await store.stock_of(conn, [sku])).get(sku)
        if row is None:
            raise NotFound(f"no stock record for SKU {sku!r}")
        return contract.Stock(sku=row.sku, available=row.available, reserved=row.reserved)

    @api.implement(contract.GET_STOCK)
    async def get_stock(ctx: RequestContext, _body: None) -> contract.Stock:
        return await level(ctx.path_params["sku"][:40])

    async def keyed(change: Callable[[Conn], Awaitable[contract.Reservation]]) -> contract.Reservation:
        """Run a change that inserts the reservation of a key; a concurrent insert of the
        same key (PostgreSQL) loses, and the change runs again to see the winner's row."""
        try:
            async with db.begin() as conn:
                return await change(conn)
        except IntegrityError:
            async with db.begin() as conn:
                return await change(conn)

    @api.implement(contract.RESERVE)
    async def reserve(ctx: RequestContext, body: contract.ReserveRequest) -> contract.Reservation:
        key = ctx.idempotency_key
        assert key is not None
        return await keyed(lambda conn: domain.reserve(conn, key, body))

    @api.implement(contract.RELEASE_BY_KEY)
    async def release_by_key(ctx: RequestContext, body: contract.UndoRequest) -> contract.Reservation:
        key = ctx.idempotency_key
        assert key is not None
        return await keyed(lambda conn: domain.release_by_key(conn, key, body.order_id))

    @api.implement(contract.RELEASE)
    async def release(ctx: RequestContext, _body: None) -> contract.Reservation:
        async with db.begin() as conn:
            return await domain.release(conn, ctx.path_params["id"])

    @api.implement(contract.COMMIT)
    async def commit(ctx: RequestContext, _body: None) -> contract.Reservation:
        async with db.begin() as conn:
            return await domain.commit(conn, ctx.path_params["id"])

    @api.implement(contract.ADMIN_STOCK)
    async def admin_stock(ctx: RequestContext, _body: None) -> contract.AdminStockPage:
        items, cursor = await read_page(
            ctx,
            db,
            store.stock,
            store.stock.c.sku,
            lambda r: contract.AdminStock(sku=r.sku, available=r.available, reserved=r.reserved, committed=r.committed),
        )
        return contract.AdminStockPage(items=items, next_cursor=cursor)

    @api.implement(contract.ADMIN_RESERVATIONS)
    async def admin_reservations(ctx: RequestContext, _body: None) -> contract.AdminReservationPage:
        items, cursor = await read_page(
            ctx,
            db,
            store.reservations,
            store.reservations.c.id,
            lambda r: contract.AdminReservation(
                order_id=r.order_id, status=r.status, items=store.to_reservation(r).items
            ),
        )
        return contract.AdminReservationPage(items=items, next_cursor=cursor)

    async def in_catalog(sku: str, deadline: float | None) -> bool:
        """Whether the catalog, which owns SKUs, has a product with this one.

        Asked before anything changes: when the catalog cannot answer, the restock is
        refused with 503 and Retry-After, never accepted for a SKU nobody sells.
        """
        try:
            msgspec.convert(sku, catalog.Sku)
        except msgspec.ValidationError:
            return False  # not a SKU the catalog could hold: no need to ask
        try:
            found = await runtime.client.call(catalog.LOOKUP, catalog.LookupRequest(skus=[sku]), deadline=deadline)
        except MeshError as exc:
            log.warning("catalog lookup failed; restock refused", sku=sku, error=repr(exc))
            retry_after_s = exc.retry_after_s if isinstance(exc, ProblemError) else None
            raise ServiceUnavailable(
                "the catalog cannot confirm this SKU now; nothing was restocked",
                retry_after_s=retry_after_s or CATALOG_RETRY_AFTER_S,
            ) from None
        return any(product.sku == sku for product in found.items)

    @api.implement(contract.RESTOCK)
    async def restock(ctx: RequestContext, body: contract.RestockRequest) -> contract.Stock:
        sku = ctx.path_params["sku"]
        if not await in_catalog(sku, ctx.deadline):
            raise NotFound(f"the catalog has no product with SKU {sku[:40]!r}")
        async with db.begin() as conn:
            if sku not in await store.stock_of(conn, [sku]):
                await conn.execute(store.stock.insert().values(sku=sku, available=0, reserved=0, committed=0))
            await store.adjust(conn, sku, available=body.quantity)
        return await level(sku)

    return api


DEFINITION = ServiceDefinition(
    name="inventory",
    build=build,
    migrations=Path(__file__).parent / "migrations",
    initialize=initialize,
    verifier=remote_verifier,
    outbox=True,
)
