"""The gateway's route table, derived from the services' contracts.

`/api/<service>/<path>` is routed when `<path>` and the method match an operation of
`<service>` that is not INTERNAL; the operation's `Access` says what auth it needs. The
services are the shop's, and those built elsewhere whose contracts the gateway is given
(`MESHOP_GATEWAY_CONTRACTS`, which `meshop up --with` sets).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from meshop.contracts import Contract, contracts
from meshop.mesh.api.operation import Access, Operation
from meshop.mesh.errors import MethodNotAllowed, NotFound

_MAX_REMEMBERED = 4096


@dataclass(frozen=True, slots=True)
class Match:
    operation: Operation[Any, Any]
    path: str


class RouteTable:
    """Finds the operation a public request addresses."""

    def __init__(self, known: Mapping[str, Contract] | None = None) -> None:
        #: Every service's contract by name (default: the shop's).
        self.contracts: dict[str, Contract] = dict(known if known is not None else contracts())
        # Literal paths first (`/products/search` before `/products/{id}`), sorted once.
        self._ops: dict[str, list[Operation[Any, Any]]] = {
            service: sorted(
                (op for op in contract.operations if op.access is not Access.INTERNAL), key=lambda o: "{" in o.path
            )
            for service, contract in self.contracts.items()
        }
        #: Paths already resolved: a hot path costs a dictionary lookup, not a regex per operation.
        self._found: dict[tuple[str, str, str], Match] = {}

    def resolve(self, service: str, method: str, path: str) -> Match:
        """The operation for `method path` of `service`; NotFound or MethodNotAllowed otherwise."""
        key = (service, method, path)
        found = self._found.get(key)
        if found is None:
            found = self._resolve(service, method, path)
            if len(self._found) >= _MAX_REMEMBERED:  # paths carry ids: bounded, forgotten in one go
                self._found.clear()
            self._found[key] = found
        return found

    def _resolve(self, service: str, method: str, path: str) -> Match:
        operations = self._ops.get(service)
        if operations is None:
            raise NotFound(f"no service named {service!r}")
        allowed: list[str] = []
        for op in operations:
            if op.match(path) is None:
                continue
            if op.method == method:
                return Match(op, path)
            allowed.append(op.method)
            if op.method == "GET":  # the gateway serves HEAD wherever GET is (RFC 9110 §9.3.2)
                allowed.append("HEAD")
        if allowed:
            raise MethodNotAllowed(
                f"{method} is not allowed on this path", headers={"allow": ", ".join(sorted(set(allowed)))}
            )
        raise NotFound("no such route")

    def operations(self) -> dict[str, list[Operation[Any, Any]]]:
        return self._ops
