"""The console's contract: admin-only, routed by the gateway."""

from __future__ import annotations

import pytest

from meshop.contracts import SERVICES, operations_of
from meshop.gateway.routes import RouteTable
from meshop.mesh.api.operation import Access


def test_every_console_operation_needs_the_admin_role() -> None:
    operations = operations_of("console")
    assert {op.name for op in operations} == {"overview", "traces", "trace"}
    assert all(op.access is Access.ADMIN for op in operations)
    assert "console" in SERVICES


@pytest.mark.parametrize(
    ("path", "operation"),
    [("/overview", "overview"), ("/traces", "traces"), ("/traces/0af7651916cd43dd8448eb211c80319c", "trace")],
)
def test_the_gateway_routes_the_console_api_from_its_contract(path: str, operation: str) -> None:
    assert RouteTable().resolve("console", "GET", path).operation.name == operation
