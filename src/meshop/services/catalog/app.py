"""The catalog service: its definition, and `build`, which wires its handlers to its API."""

from __future__ import annotations

from pathlib import Path

from meshop.contracts import catalog as contract
from meshop.contracts.seed import seed_products
from meshop.contracts.users import remote_verifier
from meshop.mesh import Api, Runtime, ServiceDefinition
from meshop.services.catalog import domain, store
from meshop.services.catalog.handlers import Catalog


async def initialize(runtime: Runtime) -> None:
    """Seed the catalog once."""
    async with runtime.database.begin() as conn:
        if await store.count(conn) == 0:
            rows = seed_products()
            for row in rows:
                row["search_text"] = domain.search_text(str(row["name"]), str(row["description"]), str(row["category"]))
            await conn.execute(store.products.insert(), rows)


async def build(runtime: Runtime) -> Api:
    catalog = Catalog(db=runtime.database)
    api = Api("catalog", max_body_bytes=runtime.settings.max_body_bytes)
    api.implement(contract.LIST)(catalog.list_products)
    api.implement(contract.GET)(catalog.get_product)
    api.implement(contract.LOOKUP)(catalog.lookup)
    api.implement(contract.CREATE)(catalog.create)
    api.implement(contract.UPDATE)(catalog.update)
    return api


DEFINITION = ServiceDefinition(
    name="catalog",
    build=build,
    contract=contract,
    migrations=Path(__file__).parent / "migrations",
    initialize=initialize,
    verifier=remote_verifier,
    outbox=True,
)
