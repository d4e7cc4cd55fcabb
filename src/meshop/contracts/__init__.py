"""The shop's service contracts: operations and message types, shared by every caller.

A service implements its contract; other services, the gateway and the CLI call it.
Contracts import only the mesh, so services depend on each other's contracts, never on
each other's code.
"""

from __future__ import annotations

from meshop.contracts import catalog, console, inventory, orders, payments, shipping, users
from meshop.mesh.operation import Operation

__all__ = ["SERVICES", "catalog", "console", "inventory", "operations_of", "orders", "payments", "shipping", "users"]

SERVICES = ("users", "catalog", "inventory", "orders", "payments", "shipping", "console")


def operations_of(service: str) -> list[Operation[object, object]]:
    """Every operation in `service`'s contract."""
    module = {
        m.__name__.rsplit(".", 1)[1]: m for m in (users, catalog, inventory, orders, payments, shipping, console)
    }[service]
    return [v for v in vars(module).values() if isinstance(v, Operation)]
