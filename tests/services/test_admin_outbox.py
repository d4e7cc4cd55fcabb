"""Every service with a database serves `GET /admin/outbox`, and the gateway routes it.

The mesh serves the operation on each such service (an empty outbox where the service
emits no events); the gateway routes only what a contract declares, so each of those
contracts must declare it too, or the README's `/api/<service>/admin/outbox` is a 404.
"""

from __future__ import annotations

import pytest

from meshop.contracts import operations_of
from meshop.gateway.routes import RouteTable
from meshop.mesh.events.admin import outbox_operation
from meshop.services import PROCESSES, load_definition

WITH_A_DATABASE = [name for name in PROCESSES if load_definition(name).migrations is not None]


def test_every_service_of_the_shop_but_the_console_and_gateway_has_a_database() -> None:
    assert sorted(WITH_A_DATABASE) == ["catalog", "inventory", "orders", "payments", "shipping", "users"]


@pytest.mark.parametrize("service", WITH_A_DATABASE)
def test_the_gateway_routes_the_admin_outbox_of_every_service_with_a_database(service: str) -> None:
    assert outbox_operation(service) in operations_of(service)
    assert RouteTable().resolve(service, "GET", "/admin/outbox").operation == outbox_operation(service)
