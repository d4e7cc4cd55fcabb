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
    from meshop.mesh.api.operation import Access, Operation
    from meshop.mesh.api.routing import Api, RequestContext
    from meshop.mesh.client.balancing import Balancer, RoundRobin, efficiency
    from meshop.mesh.client.client import ServiceClient
    from meshop.mesh.data.store import Database
    from meshop.mesh.errors import MeshError, ProblemError, TransportError
    from meshop.mesh.registry import Instance, NatsKvRegistry, Registry, RegistryView, StaticRegistry
    from meshop.mesh.security.tokens import Identity, SigningKey, TokenIssuer, TokenVerifier
    from meshop.mesh.service.lifecycle import Runtime, Service, ServiceDefinition, State
    from meshop.mesh.service.settings import Settings, load_settings

_LAZY = {
    "Access": "meshop.mesh.api.operation",
    "Api": "meshop.mesh.api.routing",
    "Balancer": "meshop.mesh.client.balancing",
    "Database": "meshop.mesh.data.store",
    "Identity": "meshop.mesh.security.tokens",
    "Instance": "meshop.mesh.registry",
    "MeshError": "meshop.mesh.errors",
    "NatsKvRegistry": "meshop.mesh.registry",
    "Operation": "meshop.mesh.api.operation",
    "ProblemError": "meshop.mesh.errors",
    "Registry": "meshop.mesh.registry",
    "RegistryView": "meshop.mesh.registry",
    "RequestContext": "meshop.mesh.api.routing",
    "RoundRobin": "meshop.mesh.client.balancing",
    "Runtime": "meshop.mesh.service.lifecycle",
    "Service": "meshop.mesh.service.lifecycle",
    "ServiceClient": "meshop.mesh.client.client",
    "ServiceDefinition": "meshop.mesh.service.lifecycle",
    "Settings": "meshop.mesh.service.settings",
    "SigningKey": "meshop.mesh.security.tokens",
    "State": "meshop.mesh.service.lifecycle",
    "StaticRegistry": "meshop.mesh.registry",
    "TokenIssuer": "meshop.mesh.security.tokens",
    "TokenVerifier": "meshop.mesh.security.tokens",
    "TransportError": "meshop.mesh.errors",
    "efficiency": "meshop.mesh.client.balancing",
    "load_settings": "meshop.mesh.service.settings",
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
