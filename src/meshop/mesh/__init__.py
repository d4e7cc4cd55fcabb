"""The mesh: a toolkit for building Python microservices.

Service lifecycle, typed operations and routes, registration and discovery, the service
client, identity tokens, databases with migrations, sagas, structured logs.

Names are imported on first use (PEP 562), so a process that needs one part — the
migration child, a CLI command — does not pay for all of them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from meshop.mesh.auth import Identity, SigningKey, TokenIssuer, TokenVerifier
    from meshop.mesh.balancing import Balancer, RoundRobin, efficiency
    from meshop.mesh.client import ServiceClient
    from meshop.mesh.errors import MeshError, ProblemError, TransportError
    from meshop.mesh.operation import Access, Operation
    from meshop.mesh.registry import Instance, NatsKvRegistry, Registry, RegistryView, StaticRegistry
    from meshop.mesh.routing import Api, RequestContext
    from meshop.mesh.service import Runtime, Service, ServiceDefinition, State
    from meshop.mesh.settings import Settings, load_settings
    from meshop.mesh.store import Database

_LAZY = {
    "Access": "meshop.mesh.operation",
    "Api": "meshop.mesh.routing",
    "Balancer": "meshop.mesh.balancing",
    "Database": "meshop.mesh.store",
    "Identity": "meshop.mesh.auth",
    "Instance": "meshop.mesh.registry",
    "MeshError": "meshop.mesh.errors",
    "NatsKvRegistry": "meshop.mesh.registry",
    "Operation": "meshop.mesh.operation",
    "ProblemError": "meshop.mesh.errors",
    "Registry": "meshop.mesh.registry",
    "RegistryView": "meshop.mesh.registry",
    "RequestContext": "meshop.mesh.routing",
    "RoundRobin": "meshop.mesh.balancing",
    "Runtime": "meshop.mesh.service",
    "Service": "meshop.mesh.service",
    "ServiceClient": "meshop.mesh.client",
    "ServiceDefinition": "meshop.mesh.service",
    "Settings": "meshop.mesh.settings",
    "SigningKey": "meshop.mesh.auth",
    "State": "meshop.mesh.service",
    "StaticRegistry": "meshop.mesh.registry",
    "TokenIssuer": "meshop.mesh.auth",
    "TokenVerifier": "meshop.mesh.auth",
    "TransportError": "meshop.mesh.errors",
    "efficiency": "meshop.mesh.balancing",
    "load_settings": "meshop.mesh.settings",
}

__all__ = [
    "Access",
    "Api",
    "Balancer",
    "Database",
    "Identity",
    "Instance",
    "MeshError",
    "NatsKvRegistry",
    "Operation",
    "ProblemError",
    "Registry",
    "RegistryView",
    "RequestContext",
    "RoundRobin",
    "Runtime",
    "Service",
    "ServiceClient",
    "ServiceDefinition",
    "Settings",
    "SigningKey",
    "State",
    "StaticRegistry",
    "TokenIssuer",
    "TokenVerifier",
    "TransportError",
    "efficiency",
    "load_settings",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'meshop.mesh' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
