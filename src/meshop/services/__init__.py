"""The shop's processes, each built only on the mesh and the contracts."""

from __future__ import annotations

import importlib

from meshop.mesh import ServiceDefinition

__all__ = ["PROCESSES", "load_definition"]

#: Every process `meshop up` runs, in start order, with the module defining it.
PROCESSES: dict[str, str] = {
    "users": "meshop.services.users.app",
    "catalog": "meshop.services.catalog.app",
    "inventory": "meshop.services.inventory.app",
    "payments": "meshop.services.payments.app",
    "shipping": "meshop.services.shipping.app",
    "orders": "meshop.services.orders.app",
    "console": "meshop.console.app",
    "gateway": "meshop.gateway.app",
}


def load_definition(name: str) -> ServiceDefinition:
    """The definition of process `name` (imported only when needed)."""
    try:
        module = importlib.import_module(PROCESSES[name])
    except KeyError:
        raise ValueError(f"unknown service {name!r}; known: {', '.join(PROCESSES)}") from None
    definition = module.DEFINITION
    assert isinstance(definition, ServiceDefinition)
    return definition
