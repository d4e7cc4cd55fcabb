"""The catalog service: browse, search and look up products; admins edit them."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from sqlalchemy.exc import IntegrityError

from meshop.contracts import catalog as contract
from meshop.contracts.seed import seed_products
from meshop.contracts.users import remote_verifier
from meshop.mesh import (
    Api,
    Conflict,
    NotFound,
    RequestContext,
    Runtime,
    ServiceDefinition,
    decode_cursor,
    encode_cursor,
)
from meshop.services.catalog import events, store


def _product(row: dict[str, Any]) -> contract.Product:
    return contract.Product(
        id=row["id"],
        sku=row["sku"],
        name=row["name"],
        description=row["description"],
        price_cents=row["price_cents"],
        currency=row["currency"],
        category=row["category"],
    )


async def initialize(runtime: Runtime) -> None:
    """Seed the catalog once."""
    async with runtime.database.begin() as conn:
        if await store.count(conn) == 0:
            rows = seed_products()
            for row in rows:
                row["search_text"] = store.search_text(str(row["name"]), str(row["description"]), str(row["category"]))
            await conn.execute(store.products.insert(), rows)


async def build(runtime: Runtime) -> Api:
    db = runtime.database
    api = Api("catalog", max_body_bytes=runtime.settings.max_body_bytes)

    @api.implement(contract.LIST)
    async def list_products(ctx: RequestContext, _body: None) -> contract.ProductPage:
        limit = ctx.query_int("limit", default=20, low=1, high=100)
        after = decode_cursor(ctx.query_str("cursor", max_length=64))
        async with db.read() as conn:
            rows = await store.page(
                conn,
                q=ctx.query_str("q"),
                category=ctx.query_str("category", max_length=60),
                after=after,
                limit=limit + 1,
            )
        items = [_product(r) for r in rows[:limit]]
        return contract.ProductPage(items=items, next_cursor=encode_cursor(items[-1].id) if len(rows) > limit else None)

    @api.implement(contract.GET)
    async def get_product(ctx: RequestContext, _body: None) -> contract.Product:
        async with db.read() as conn:
            row = await store.by_id(conn, ctx.path_params["id"][:64])
        if row is None:
            raise NotFound("no such product")
        return _product(row)

    @api.implement(contract.LOOKUP)
    async def lookup(_ctx: RequestContext, body: contract.LookupRequest) -> contract.LookupResult:
        async with db.read() as conn:
            rows = await store.by_skus(conn, sorted(set(body.skus)))
        return contract.LookupResult(items=[_product(r) for r in rows])

    @api.implement(contract.CREATE)
    async def create(_ctx: RequestContext, body: contract.ProductCreate) -> contract.Product:
        row = {
            "id": hashlib.sha256(body.sku.encode()).hexdigest()[:24],
            "sku": body.sku,
            "name": body.name,
            "description": body.description,
            "price_cents": body.price_cents,
            "currency": body.currency,
            "category": body.category,
            "search_text": store.search_text(body.name, body.description, body.category),
        }
        try:
            async with db.begin() as conn:
                await conn.execute(store.products.insert().values(**row))
                await events.product_updated(conn, row)
        except IntegrityError:
            raise Conflict(f"a product with SKU {body.sku} exists") from None
        return _product(row)

    @api.implement(contract.UPDATE)
    async def update(ctx: RequestContext, body: contract.ProductUpdate) -> contract.Product:
        async with db.begin() as conn:
            row = await store.by_id(conn, ctx.path_params["id"][:64])
            if row is None:
                raise NotFound("no such product")
            changes = {
                k: v
                for k, v in (
                    ("name", body.name),
                    ("description", body.description),
                    ("price_cents", body.price_cents),
                    ("category", body.category),
                )
                if v is not None
            }
            if changes:
                row.update(changes)
                row["search_text"] = store.search_text(row["name"], row["description"], row["category"])
                await conn.execute(
                    store.products.update()
                    .where(store.products.c.id == row["id"])
                    .values(**changes, search_text=row["search_text"])
                )
                await events.product_updated(conn, row)
        return _product(row)

    return api


DEFINITION = ServiceDefinition(
    name="catalog",
    build=build,
    migrations=Path(__file__).parent / "migrations",
    initialize=initialize,
    verifier=remote_verifier,
    outbox=True,
)
