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
    """The definition of process `name` (imported only when needed).

    `name` is one of the shop's processes, or a service built elsewhere on the mesh named
    as `module:ATTRIBUTE` (`reviews.app:DEFINITION`, importable from `sys.path`).
    """
    module_name, colon, attribute = name.partition(":")
    if not colon:
        try:
            module_name, attribute = PROCESSES[name], "DEFINITION"
        except KeyError:
            raise ValueError(
                f"unknown service {name!r}; known: {', '.join(PROCESSES)}, or module:ATTRIBUTE of another"
            ) from None
    try:
        definition = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot load service {name!r}: {exc}") from None
    if not isinstance(definition, ServiceDefinition):
        raise ValueError(f"{name} is a {type(definition).__name__}, not a meshop.mesh.ServiceDefinition")
    return definition
