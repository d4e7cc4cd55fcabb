"""The console's contract: admin-only, routed by the gateway, and the trace store's views as its types."""

from __future__ import annotations

import msgspec
import pytest

from meshop.console.app import _trace
from meshop.console.traces import SpanEvent, SpanView, TraceView
from meshop.contracts import SERVICES, operations_of
from meshop.contracts import console as contract
from meshop.gateway.routes import RouteTable
from meshop.mesh.operation import Access


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


def test_a_kept_trace_is_served_as_the_contracts_trace() -> None:
    view = TraceView(
        trace_id="0af7651916cd43dd8448eb211c80319c",
        duration_ms=12.5,
        started_at=1_700_000_000.0,
        root="POST /api/orders",
        services=["gateway", "orders"],
        status="error",
        kept_because="error",
        order_id="o-1",
        spans=[
            SpanView(
                service="orders",
                name="orders.create",
                start_ms=1.0,
                duration_ms=10.0,
                status="error",
                kind="server",
                span_id="b7ad6b7169203331",
                parent_id=None,
                attributes={"http.route": "/orders", "retries": 1},
                events=[SpanEvent("retry", 2.5, {"attempt": 2})],
            )
        ],
    )
    served = _trace(view)
    assert isinstance(served, contract.Trace)
    assert msgspec.to_builtins(served) == msgspec.to_builtins(view)
    assert served.spans[0].events[0].attributes == {"attempt": 2}
