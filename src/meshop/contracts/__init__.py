"""The shop's service contracts: operations and message types, shared by every caller.

A service implements its contract; other services, the gateway and the CLI call it.
Contracts import only the mesh, so services depend on each other's contracts, never on
each other's code.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from meshop.contracts import catalog, console, inventory, orders, payments, shipping, users
from meshop.mesh import ConsumerStats, Example, Operation, OutboxStats, ReplayResult

__all__ = [
    "SERVICES",
    "Contract",
    "catalog",
    "console",
    "contracts",
    "examples_of",
    "inventory",
    "operations_in",
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


def operations_in(module: ModuleType) -> list[Operation[Any, Any]]:
    """Every operation a contract module defines, in the order it declares them."""
    return [v for v in vars(module).values() if isinstance(v, Operation)]


def operations_of(service: str) -> list[Operation[Any, Any]]:
    """Every operation in the shop's `service`'s contract, in the order it declares them."""
    return operations_in(_MODULES[service])


def examples_of(service: str) -> dict[Operation[Any, Any], Example]:
    """The example request and answer of each of the shop's `service`'s operations that has one."""
    return Contract.of(_MODULES[service]).examples


@dataclass(frozen=True)
class Contract:
    """One service's contract, read from its module: what the gateway routes and documents."""

    service: str
    #: In the order the module declares them.
    operations: tuple[Operation[Any, Any], ...]
    examples: dict[Operation[Any, Any], Example]
    #: The first line of the module's docstring.
    description: str

    @classmethod
    def of(cls, module: ModuleType) -> Contract:
        """The contract `module` defines: its Operations, all of one service, and its `EXAMPLES`."""
        operations = operations_in(module)
        services = {op.service for op in operations}
        if len(services) != 1:
            found = ", ".join(sorted(services)) or "none"
            raise ValueError(f"{module.__name__} must define the operations of one service; found {found}")
        shared = {op: _ADMIN_EXAMPLES[op.name] for op in operations if op.name in _ADMIN_EXAMPLES}
        examples: Mapping[Operation[Any, Any], Example] = getattr(module, "EXAMPLES", {})
        doc = (module.__doc__ or "").strip()
        service = services.pop()
        return cls(service, tuple(operations), {**shared, **examples}, doc.splitlines()[0] if doc else service)


def contracts(extra: Sequence[str] = ()) -> dict[str, Contract]:
    """The shop's contracts in `SERVICES` order, then those of the modules named in `extra`
    (`reviews.contract`: services built elsewhere on the mesh, importable from `sys.path`)."""
    found = {service: Contract.of(module) for service, module in _MODULES.items()}
    for name in extra:
        try:
            contract = Contract.of(importlib.import_module(name))
        except ImportError as exc:
            raise ValueError(f"cannot import the contract {name!r}: {exc}") from None
        if contract.service in found:
            raise ValueError(f"{name}: the service {contract.service!r} has a contract already")
        found[contract.service] = contract
    return found
