"""The mesh: a toolkit for building Python microservices.

Service lifecycle, typed operations and routes, registration and discovery, the service
client, identity tokens, databases with migrations, structured logs.
"""

from __future__ import annotations

from meshop.mesh.auth import Identity, SigningKey, TokenIssuer, TokenVerifier
from meshop.mesh.balancing import Balancer, RoundRobin, efficiency
from meshop.mesh.client import ServiceClient, new_session
from meshop.mesh.errors import MeshError, ProblemError, TransportError
from meshop.mesh.operation import Access, Operation
from meshop.mesh.registry import Instance, NatsKvRegistry, Registry, RegistryView, StaticRegistry
from meshop.mesh.routing import Api, RequestContext
from meshop.mesh.service import Runtime, Service, ServiceDefinition, State
from meshop.mesh.settings import Settings, load_settings
from meshop.mesh.store import Database

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
    "new_session",
]
