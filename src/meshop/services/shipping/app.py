"""The shipping service: its adapters and definition, and `build`, which wires its handlers to its API."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from meshop.contracts import shipping as contract
from meshop.contracts.users import remote_verifier
from meshop.mesh import Api, Runtime, ServiceDefinition, Settings
from meshop.services.shipping.handlers import Shipping
from meshop.services.shipping.providers import Carrier, SimulatedCarrier


@dataclass(frozen=True, kw_only=True)
class Adapters:
    """What shipping talks to outside the mesh."""

    carrier: Carrier


def adapters(_settings: Settings) -> Adapters:
    """The simulated carrier (the only carrier so far; it has no settings)."""
    return Adapters(carrier=SimulatedCarrier())


async def build(runtime: Runtime) -> Api:
    shipping = Shipping(db=runtime.database, carrier=runtime.adapter(Adapters).carrier)
    api = Api("shipping", max_body_bytes=runtime.settings.max_body_bytes)
    api.implement(contract.QUOTE)(shipping.quote)
    api.implement(contract.CREATE)(shipping.create)
    api.implement(contract.CANCEL)(shipping.cancel)
    api.implement(contract.CANCEL_BY_KEY)(shipping.cancel_by_key)
    api.implement(contract.ADMIN_SHIPMENTS)(shipping.admin_shipments)
    return api


DEFINITION = ServiceDefinition(
    name="shipping",
    build=build,
    contract=contract,
    migrations=Path(__file__).parent / "migrations",
    verifier=remote_verifier,
    outbox=True,
    adapters=adapters,
)
