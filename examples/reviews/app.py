"""The reviews service: its definition, and `build`, which wires its handlers to its API."""

from __future__ import annotations

from pathlib import Path

from meshop.contracts import catalog
from meshop.contracts.users import remote_verifier
from meshop.mesh import Api, Runtime, ServiceDefinition
from reviews import contract, events
from reviews.handlers import Reviews


async def build(runtime: Runtime) -> Api:
    reviews = Reviews(db=runtime.database, client=runtime.client)
    api = Api("reviews", max_body_bytes=runtime.settings.max_body_bytes)
    api.implement(contract.POST)(reviews.post)
    api.implement(contract.LIST)(reviews.list)
    api.implement(contract.HIDE)(reviews.hide)
    runtime.consume(
        "purchases",
        handler=events.purchase_event,
        reset=events.reset_purchases,
    )
    return api


DEFINITION = ServiceDefinition(
    name="reviews",
    build=build,
    migrations=Path(__file__).parent / "migrations",
    verifier=remote_verifier,
    outbox=True,
    contract=contract,
    calls=(catalog.GET,),
    consumes={"purchases": events.PURCHASE_EVENTS},
)
