"""The shop's service contracts: operations and message types, shared by every caller.

A service implements its contract; other services, the gateway and the CLI call it.
Contracts import only the mesh, so services depend on each other's contracts, never on
each other's code.
"""

from __future__ import annotations

from typing import Any

from meshop.contracts import catalog, console, inventory, orders, payments, shipping, users
from meshop.mesh import ConsumerStats, Example, Operation, OutboxStats, ReplayResult

__all__ = [
    "SERVICES",
    "catalog",
    "console",
    "examples_of",
    "inventory",
    "operations_of",
    "orders",
    "payments",
    "shipping",
    "users",
]

SERVICES = ("users", "catalog", "inventory", "orders", "payments", "shipping", "console")


_MODULES = {m.__name__.rsplit(".", 1)[1]: m for m in (users, catalog, inventory, orders, payments, shipping, console)}

#: The examples of the admin operations the mesh adds to a service (`meshop.mesh.events.admin`), by name.
_ADMIN_EXAMPLES = {
    "admin_outbox": Example(response=OutboxStats(pending=0, oldest_pending_age_s=0.0)),
    "admin_consumers": Example(
        response=[
            ConsumerStats(
                name="order-stats",
                stream="orders",
                applied=42,
                duplicates=0,
                failures=0,
                dead_lettered=0,
                pending=0,
                unacknowledged=0,
            )
        ]
    ),
    "admin_replay": Example(
        response=ReplayResult(name="order-stats", replayed=42, applied=42, failed=0, seconds=0.35),
        params={"name": "order-stats"},
    ),
}


def operations_of(service: str) -> list[Operation[object, object]]:
    """Every operation in `service`'s contract, in the order it declares them."""
    return [v for v in vars(_MODULES[service]).values() if isinstance(v, Operation)]


def examples_of(service: str) -> dict[Operation[Any, Any], Example]:
    """The example request and answer of each of `service`'s operations that has one."""
    shared = {op: _ADMIN_EXAMPLES[op.name] for op in operations_of(service) if op.name in _ADMIN_EXAMPLES}
    return {**shared, **getattr(_MODULES[service], "EXAMPLES", {})}
