"""Who may call an INTERNAL operation: the callee checks the caller's identity against its contract."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from meshop.contracts import SERVICES, operations_of
from meshop.mesh.api.operation import Access, Operation
from meshop.mesh.api.routing import Api, RequestContext
from meshop.mesh.headers import IDENTITY_HEADER
from meshop.mesh.security.identity import CallerVerifier, Issuer, TokenMinter, TrustBundle
from meshop.mesh.telemetry.metrics import Metrics


class Reply(msgspec.Struct):
    text: str


CHARGE: Operation[None, Reply] = Operation(
    "demo", "charge", "POST", "/internal/charge", None, Reply, callers=("orders",)
)
CLOSED: Operation[None, Reply] = Operation("demo", "closed", "POST", "/internal/closed", None, Reply)

ROOT = Issuer.generate()


def _header(service: str, callee: str = "demo") -> dict[str, str]:
    return {IDENTITY_HEADER: TokenMinter(ROOT.issue(service)).header(callee)}


def _api(*, verifying: bool = True) -> Api:
    api = Api("demo")
    api.metrics = Metrics("demo")
    if verifying:
        api.callers = CallerVerifier("demo", TrustBundle({ROOT.kid: ROOT.key.public_key()}))

    @api.implement(CHARGE)
    async def charge(_ctx: RequestContext, _body: None) -> Reply:
        return Reply(text="charged")

    @api.implement(CLOSED)
    async def closed(_ctx: RequestContext, _body: None) -> Reply:
        return Reply(text="opened")

    return api


@pytest.fixture
def api() -> Api:
    return _api()


def _client(api: Api) -> TestClient:
    return TestClient(Starlette(routes=api.routes()), raise_server_exceptions=False)


def _refused(response: Any, status: int) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert "charged" not in response.text


def _refusals(api: Api) -> dict[tuple[str, str, str], float]:
    assert api.metrics is not None
    return {
        (s.labels["operation"], s.labels["outcome"], s.labels["caller"]): s.value
        for metric in api.metrics.refusals.collect()
        for s in metric.samples
        if s.name.endswith("_total")
    }


def test_an_allowed_caller_is_served(api: Api) -> None:
    response = _client(api).post("/internal/charge", headers=_header("orders"))
    assert response.status_code == 200, response.text
    assert response.json() == {"text": "charged"}


def test_no_identity_is_401_and_counted(api: Api) -> None:
    _refused(_client(api).post("/internal/charge"), 401)
    assert _refusals(api) == {("demo.charge", "unauthenticated", "none"): 1.0}


def test_another_service_is_403_and_counted_with_its_name(api: Api) -> None:
    _refused(_client(api).post("/internal/charge", headers=_header("shipping")), 403)
    assert _refusals(api) == {("demo.charge", "forbidden", "shipping"): 1.0}


def test_a_token_meant_for_another_service_is_401(api: Api) -> None:
    _refused(_client(api).post("/internal/charge", headers=_header("orders", callee="payments")), 401)


def test_an_operation_that_lists_no_caller_is_closed_to_every_service(api: Api) -> None:
    _refused(_client(api).post("/internal/closed", headers=_header("orders")), 403)


def test_an_instance_that_verifies_no_identity_refuses_every_internal_call() -> None:
    _refused(_client(_api(verifying=False)).post("/internal/charge", headers=_header("orders")), 401)


def test_only_an_internal_operation_lists_callers() -> None:
    with pytest.raises(ValueError, match="only an INTERNAL"):
        Operation("demo", "x", "GET", "/x", None, Reply, Access.PUBLIC, callers=("orders",))


@pytest.mark.parametrize("service", SERVICES)
def test_every_internal_operation_of_the_shop_names_its_callers(service: str) -> None:
    """Default deny would close an operation that lists nobody: each must say who calls it."""
    for op in operations_of(service):
        if op.access is Access.INTERNAL:
            assert op.callers, f"{op.qualified} lists no callers"
            assert set(op.callers) <= {*SERVICES, "gateway"}, f"{op.qualified}: unknown caller in {op.callers}"
            assert service not in op.callers, f"{op.qualified}: a service does not call itself"


def test_meshop_explain_prints_the_allowed_callers() -> None:
    from typer.testing import CliRunner

    from meshop.cli.main import app

    result = CliRunner().invoke(app, ["explain", "catalog", "lookup"])
    assert result.exit_code == 0, result.output
    assert "callers: orders, inventory only" in result.output
    user = CliRunner().invoke(app, ["explain", "orders", "get"])
    assert "access: user" in user.output
