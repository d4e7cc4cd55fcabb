"""The inventory service: its definition, and `build`, which wires its handlers to its API."""

from __future__ import annotations

from pathlib import Path

from meshop.contracts import catalog
from meshop.contracts import inventory as contract
from meshop.contracts.seed import seed_stock
from meshop.contracts.users import remote_verifier
from meshop.mesh import Api, Runtime, ServiceDefinition
from meshop.services.inventory import store
from meshop.services.inventory.handlers import Inventory


async def initialize(runtime: Runtime) -> None:
    """Seed stock for the catalog's SKUs, once."""
    async with runtime.database.begin() as conn:
        if not await store.count(conn):
            rows = [{"sku": sku, "available": qty, "reserved": 0, "committed": 0} for sku, qty in seed_stock().items()]
            await conn.execute(store.stock.insert(), rows)


async def build(runtime: Runtime) -> Api:
    inventory = Inventory(db=runtime.database, client=runtime.client)
    api = Api("inventory", max_body_bytes=runtime.settings.max_body_bytes)
    api.implement(contract.GET_STOCK)(inventory.get_stock)
    api.implement(contract.RESERVE)(inventory.reserve)
    api.implement(contract.RELEASE_BY_KEY)(inventory.release_by_key)
    api.implement(contract.RELEASE)(inventory.release)
    api.implement(contract.COMMIT)(inventory.commit)
    api.implement(contract.ADMIN_STOCK)(inventory.admin_stock)
    api.implement(contract.ADMIN_RESERVATIONS)(inventory.admin_reservations)
    api.implement(contract.RESTOCK)(inventory.restock)
    return api


DEFINITION = ServiceDefinition(
    name="inventory",
    build=build,
    contract=contract,
    migrations=Path(__file__).parent / "migrations",
    initialize=initialize,
    verifier=remote_verifier,
    outbox=True,
    calls=(catalog.LOOKUP,),
)
