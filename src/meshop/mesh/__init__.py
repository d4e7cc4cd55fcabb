"""The mesh: a toolkit for building Python microservices, and its public API.

A service built on the mesh imports from here and from its contracts only (the shop's
services do, checked by import-linter):

- a service and its settings: `ServiceDefinition`, `Runtime`, `Service`, `State`,
  `Settings`, `load_settings`, `from_env`, `Seconds`;
- its operations and handlers: `Operation`, `Access`, `Api`, `RequestContext`, `Example`,
  `json_response`, `problem_response`, `read_page`, `encode_cursor`, `decode_cursor`,
  `from_loopback`;
- the errors it answers with (each a problem+json answer with its status): `MeshError`,
  `ProblemError`, `BadRequest`, `Unauthorized`, `Forbidden`, `NotFound`, `Conflict`,
  `Unprocessable`, `TooManyRequests`, `ServiceUnavailable`, `TransportError`, `ConfigError`;
- calling other services: `ServiceClient`, `Balancer`, `RoundRobin`, `efficiency`;
- registration and discovery: `Instance`, `Registry`, `RegistryView`, `NatsKvRegistry`,
  `StaticRegistry`;
- its database: `Database`, `Conn`, `insert_unless_present`;
- events: `EventType` (a contract's typed event), `emit`, `Event` (the envelope),
  `create_outbox_table`, `create_inbox_table`, and the admin
  operations `outbox_operation`, `consumers_operation`, `replay_operation` with their
  `OutboxStats`, `ConsumerStats`, `ReplayResult`;
- sagas: `Saga`, `Step`, `StepFailed`, `SagaRunner`, `SagaState`, `SagaStatus`,
  `SqlSagaLog`, `sagas` (its table), `create_saga_table`, `add_saga_cancellation`;
- tokens: `Identity`, `SigningKey`, `TokenIssuer`, `TokenVerifier`;
- telemetry: `tracing` (the module: `tracing.annotate`, `tracing.span`), `AttributeValue`. The subpackages
(`meshop.mesh.api`, `.client`, ...) are the implementation, grouped by concept; what is
not exported here may change without notice. Test tools: `meshop.mesh.testing`.

Names are imported on first use (PEP 562), so a process that needs one part — the
migration child, a CLI command — does not pay for all of them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from meshop.mesh.api.openapi import Example
    from meshop.mesh.api.operation import Access, Operation
    from meshop.mesh.api.pagination import decode_cursor, encode_cursor, read_page
    from meshop.mesh.api.routing import Api, RequestContext, json_response, problem_response
    from meshop.mesh.client.balancing import Balancer, RoundRobin, efficiency
    from meshop.mesh.client.client import ServiceClient
    from meshop.mesh.data.store import Conn, Database, insert_unless_present
    from meshop.mesh.errors import (
        BadRequest,
        ConfigError,
        Conflict,
        Forbidden,
        MeshError,
        NotFound,
        ProblemError,
        ServiceUnavailable,
        TooManyRequests,
        TransportError,
        Unauthorized,
        Unprocessable,
    )
    from meshop.mesh.events.admin import (
        ConsumerStats,
        OutboxStats,
        ReplayResult,
        consumers_operation,
        outbox_operation,
        replay_operation,
    )
    from meshop.mesh.events.consumer import create_inbox_table
    from meshop.mesh.events.envelope import Event, EventType
    from meshop.mesh.events.outbox import create_outbox_table, emit
    from meshop.mesh.registry import Instance, NatsKvRegistry, Registry, RegistryView, StaticRegistry
    from meshop.mesh.saga.log import SqlSagaLog, add_saga_cancellation, create_saga_table, sagas
    from meshop.mesh.saga.orchestrator import Saga, SagaRunner, SagaState, SagaStatus, Step, StepFailed
    from meshop.mesh.security.loopback import from_loopback
    from meshop.mesh.security.tokens import Identity, SigningKey, TokenIssuer, TokenVerifier
    from meshop.mesh.service.lifecycle import Runtime, Service, ServiceDefinition, State
    from meshop.mesh.service.settings import Seconds, Settings, from_env, load_settings
    from meshop.mesh.telemetry import tracing
    from meshop.mesh.telemetry.spanrecord import AttributeValue

#: Where each exported name lives.
_LAZY = {
    "Access": "meshop.mesh.api.operation",
    "Api": "meshop.mesh.api.routing",
    "AttributeValue": "meshop.mesh.telemetry.spanrecord",
    "BadRequest": "meshop.mesh.errors",
    "Balancer": "meshop.mesh.client.balancing",
    "ConfigError": "meshop.mesh.errors",
    "Conflict": "meshop.mesh.errors",
    "Conn": "meshop.mesh.data.store",
    "ConsumerStats": "meshop.mesh.events.admin",
    "Database": "meshop.mesh.data.store",
    "Event": "meshop.mesh.events.envelope",
    "EventType": "meshop.mesh.events.envelope",
    "Example": "meshop.mesh.api.openapi",
    "Forbidden": "meshop.mesh.errors",
    "Identity": "meshop.mesh.security.tokens",
    "Instance": "meshop.mesh.registry",
    "MeshError": "meshop.mesh.errors",
    "NatsKvRegistry": "meshop.mesh.registry",
    "NotFound": "meshop.mesh.errors",
    "Operation": "meshop.mesh.api.operation",
    "OutboxStats": "meshop.mesh.events.admin",
    "ProblemError": "meshop.mesh.errors",
    "Registry": "meshop.mesh.registry",
    "RegistryView": "meshop.mesh.registry",
    "ReplayResult": "meshop.mesh.events.admin",
    "RequestContext": "meshop.mesh.api.routing",
    "RoundRobin": "meshop.mesh.client.balancing",
    "Runtime": "meshop.mesh.service.lifecycle",
    "Saga": "meshop.mesh.saga.orchestrator",
    "SagaRunner": "meshop.mesh.saga.orchestrator",
    "SagaState": "meshop.mesh.saga.orchestrator",
    "SagaStatus": "meshop.mesh.saga.orchestrator",
    "Seconds": "meshop.mesh.service.settings",
    "Service": "meshop.mesh.service.lifecycle",
    "ServiceClient": "meshop.mesh.client.client",
    "ServiceDefinition": "meshop.mesh.service.lifecycle",
    "ServiceUnavailable": "meshop.mesh.errors",
    "Settings": "meshop.mesh.service.settings",
    "SigningKey": "meshop.mesh.security.tokens",
    "SqlSagaLog": "meshop.mesh.saga.log",
    "State": "meshop.mesh.service.lifecycle",
    "StaticRegistry": "meshop.mesh.registry",
    "Step": "meshop.mesh.saga.orchestrator",
    "StepFailed": "meshop.mesh.saga.orchestrator",
    "TokenIssuer": "meshop.mesh.security.tokens",
    "TokenVerifier": "meshop.mesh.security.tokens",
    "TooManyRequests": "meshop.mesh.errors",
    "TransportError": "meshop.mesh.errors",
    "Unauthorized": "meshop.mesh.errors",
    "Unprocessable": "meshop.mesh.errors",
    "add_saga_cancellation": "meshop.mesh.saga.log",
    "consumers_operation": "meshop.mesh.events.admin",
    "create_inbox_table": "meshop.mesh.events.consumer",
    "create_outbox_table": "meshop.mesh.events.outbox",
    "create_saga_table": "meshop.mesh.saga.log",
    "decode_cursor": "meshop.mesh.api.pagination",
    "efficiency": "meshop.mesh.client.balancing",
    "emit": "meshop.mesh.events.outbox",
    "encode_cursor": "meshop.mesh.api.pagination",
    "from_env": "meshop.mesh.service.settings",
    "from_loopback": "meshop.mesh.security.loopback",
    "insert_unless_present": "meshop.mesh.data.store",
    "json_response": "meshop.mesh.api.routing",
    "load_settings": "meshop.mesh.service.settings",
    "outbox_operation": "meshop.mesh.events.admin",
    "problem_response": "meshop.mesh.api.routing",
    "read_page": "meshop.mesh.api.pagination",
    "replay_operation": "meshop.mesh.events.admin",
    "sagas": "meshop.mesh.saga.log",
}
#: Modules exported as such.
_MODULES = {
    "tracing": "meshop.mesh.telemetry.tracing",
}

__all__ = [
    "Access",
    "Api",
    "AttributeValue",
    "BadRequest",
    "Balancer",
    "ConfigError",
    "Conflict",
    "Conn",
    "ConsumerStats",
    "Database",
    "Event",
    "EventType",
    "Example",
    "Forbidden",
    "Identity",
    "Instance",
    "MeshError",
    "NatsKvRegistry",
    "NotFound",
    "Operation",
    "OutboxStats",
    "ProblemError",
    "Registry",
    "RegistryView",
    "ReplayResult",
    "RequestContext",
    "RoundRobin",
    "Runtime",
    "Saga",
    "SagaRunner",
    "SagaState",
    "SagaStatus",
    "Seconds",
    "Service",
    "ServiceClient",
    "ServiceDefinition",
    "ServiceUnavailable",
    "Settings",
    "SigningKey",
    "SqlSagaLog",
    "State",
    "StaticRegistry",
    "Step",
    "StepFailed",
    "TokenIssuer",
    "TokenVerifier",
    "TooManyRequests",
    "TransportError",
    "Unauthorized",
    "Unprocessable",
    "add_saga_cancellation",
    "consumers_operation",
    "create_inbox_table",
    "create_outbox_table",
    "create_saga_table",
    "decode_cursor",
    "efficiency",
    "emit",
    "encode_cursor",
    "from_env",
    "from_loopback",
    "insert_unless_present",
    "json_response",
    "load_settings",
    "outbox_operation",
    "problem_response",
    "read_page",
    "replay_operation",
    "sagas",
    "tracing",
]


def __getattr__(name: str) -> Any:
    module = _MODULES.get(name)
    if module is not None:
        value = importlib.import_module(module)
    else:
        module = _LAZY.get(name)
        if module is None:
            raise AttributeError(f"module 'meshop.mesh' has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
