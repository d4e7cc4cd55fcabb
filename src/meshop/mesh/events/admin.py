"""The admin operations the service lifecycle adds to a service's API, and what they answer.

`GET /admin/outbox` (every service with a database: empty where it emits no events),
`GET /admin/consumers` and `POST /admin/consumers/{name}/replay` (a service with event
consumers). They live apart from the outbox and the consumers themselves, which need a
database: the contracts, the gateway and the console describe and route these operations
without loading SQLAlchemy.
"""

from __future__ import annotations

import msgspec

from meshop.mesh.api.operation import Access, Operation

__all__ = [
    "ConsumerStats",
    "OutboxStats",
    "ReplayResult",
    "consumers_operation",
    "outbox_operation",
    "replay_operation",
]


class OutboxStats(msgspec.Struct, kw_only=True):
    """A service's unsent events (what `GET /admin/outbox` answers)."""

    pending: int
    oldest_pending_age_s: float


def outbox_operation(service: str) -> Operation[None, OutboxStats]:
    """The admin operation every service with a database serves at `/admin/outbox`.

    Its contract declares it too, so that the gateway routes it.
    """
    return Operation(
        service,
        "admin_outbox",
        "GET",
        "/admin/outbox",
        None,
        OutboxStats,
        Access.ADMIN,
        idempotent=True,
        summary="Events not yet published, and the age of the oldest",
    )


class ConsumerStats(msgspec.Struct, kw_only=True):
    """One consumer's counters in this process, and its backlog in JetStream."""

    name: str
    stream: str
    applied: int
    duplicates: int
    failures: int
    dead_lettered: int
    #: Messages JetStream has not yet delivered to this consumer (any replica).
    pending: int
    #: Delivered to a replica and not yet acknowledged.
    unacknowledged: int


class ReplayResult(msgspec.Struct, kw_only=True):
    """What a replay did: `POST /admin/consumers/{name}/replay` answers it."""

    name: str
    #: Messages read from the stream, and how many changed the read model.
    replayed: int
    applied: int
    #: Events that failed again (they are in the dead-letter stream already).
    failed: int
    seconds: float


def consumers_operation(service: str) -> Operation[None, list[ConsumerStats]]:
    """`GET /admin/consumers`: every consumer a service runs."""
    return Operation(
        service,
        "admin_consumers",
        "GET",
        "/admin/consumers",
        None,
        list[ConsumerStats],
        Access.ADMIN,
        idempotent=True,
        summary="The service's event consumers: applied, deduplicated, dead-lettered, pending",
    )


def replay_operation(service: str) -> Operation[None, ReplayResult]:
    """`POST /admin/consumers/{name}/replay`: rebuild that consumer's read model."""
    return Operation(
        service,
        "admin_replay",
        "POST",
        "/admin/consumers/{name}/replay",
        None,
        ReplayResult,
        Access.ADMIN,
        idempotent=True,
        summary="Rebuild a consumer's read model from its stream",
    )
