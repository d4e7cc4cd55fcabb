"""The catalog's operations: browse, search and look up products; admins create and edit them."""

from __future__ import annotations

from sqlalchemy.exc import IntegrityError

from meshop.contracts import catalog as contract
from meshop.mesh import Conflict, Database, NotFound, RequestContext, decode_cursor, encode_cursor
from meshop.services.catalog import domain, events, store


class Catalog:
    """One method per operation of the catalog's contract."""

    def __init__(self, *, db: Database) -> None:
        self._db = db

    async def list_products(self, ctx: RequestContext, _body: None) -> contract.ProductPage:
        limit = ctx.query_int("limit", default=20, low=1, high=100)
        after = decode_cursor(ctx.query_str("cursor", max_length=64))
        async with self._db.read() as conn:
            rows = await store.page(
                conn,
                words=domain.search_words(ctx.query_str("q")),
                category=ctx.query_str("category", max_length=60),
                after=after,
                limit=limit + 1,
            )
        items = [domain.product(r) for r in rows[:limit]]
        return contract.ProductPage(items=items, next_cursor=encode_cursor(items[-1].id) if len(rows) > limit else None)

    async def get_product(self, ctx: RequestContext, _body: None) -> contract.Product:
        async with self._db.read() as conn:
            row = await store.by_id(conn, ctx.path_params["id"][:64])
        if row is None:
            raise NotFound("no such product")
        return domain.product(row)

    async def lookup(self, _ctx: RequestContext, body: contract.LookupRequest) -> contract.LookupResult:
        async with self._db.read() as conn:
            rows = await store.by_skus(conn, sorted(set(body.skus)))
        return contract.LookupResult(items=[domain.product(r) for r in rows])

    async def create(self, _ctx: RequestContext, body: contract.ProductCreate) -> contract.Product:
        row = domain.new_product(body)
        try:
            async with self._db.begin() as conn:
                await store.insert(conn, row)
                await events.product_updated(conn, row)
        except IntegrityError:
            raise Conflict(f"a product with SKU {body.sku} exists") from None
        return domain.product(row)

    async def update(self, ctx: RequestContext, body: contract.ProductUpdate) -> contract.Product:
        async with self._db.begin() as conn:
            row = await store.by_id(conn, ctx.path_params["id"][:64])
            if row is None:
                raise NotFound("no such product")
            changes = domain.changes(body)
            if changes:
                row.update(changes)
                row["search_text"] = domain.search_text(row["name"], row["description"], row["category"])
                await store.change(conn, row["id"], {**changes, "search_text": row["search_text"]})
                await events.product_updated(conn, row)
        return domain.product(row)
