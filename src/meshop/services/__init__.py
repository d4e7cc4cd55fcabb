"""The shop's processes, each built only on the mesh and the contracts."""

from __future__ import annotations

import functools
import importlib
from collections.abc import Sequence

from meshop.mesh import ServiceDefinition

__all__ = ["PROCESSES", "definitions", "load_definition"]

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


def definitions(extra: Sequence[ServiceDefinition] = ()) -> dict[str, ServiceDefinition]:
    """Every process's definition by name: the shop's in start order, then `extra`'s
    (services built elsewhere that run beside it, `meshop up --with`)."""
    found = dict(_shop())
    for definition in extra:
        if definition.name in found:
            raise ValueError(
                f"a service named {definition.name!r} runs already: a service built elsewhere needs its own name"
            )
        found[definition.name] = definition
    return found


@functools.cache
def _shop() -> tuple[tuple[str, ServiceDefinition], ...]:
    return tuple((name, load_definition(name)) for name in PROCESSES)
