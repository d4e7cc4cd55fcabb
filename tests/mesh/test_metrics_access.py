"""Who may read /metrics: loopback clients, or a remote client with an admin token.

Every end-to-end client is loopback, so the remote branch is driven here through a
service's ASGI app with a non-loopback client address in the scope.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from starlette.testclient import TestClient

from meshop.mesh.auth import SigningKey, TokenIssuer, TokenVerifier
from meshop.mesh.metrics import Metrics
from meshop.mesh.routing import Api
from meshop.mesh.service import Service, ServiceDefinition
from meshop.mesh.settings import Settings

KEY = SigningKey.generate()
REMOTE = ("203.0.113.7", 40000)  # TEST-NET-3: not this machine


async def _jwks() -> dict[str, Any]:
    return {"keys": [KEY.public_jwk()]}


async def _build(_runtime: Any) -> Api:
    raise AssertionError("not started: the app is built directly")


def _app(*, verifier: TokenVerifier | None, metrics: bool = True) -> Any:
    service = Service(ServiceDefinition(name="demo", build=_build), Settings(metrics=metrics))
    service.runtime = SimpleNamespace(metrics=Metrics("demo"))  # type: ignore[assignment]  # all /metrics reads
    api = Api("demo", verifier=verifier)
    return service._app(api)


def _client(app: Any, address: tuple[str, int] = REMOTE) -> TestClient:
    return TestClient(app, client=address, raise_server_exceptions=False)


def _bearer(roles: list[str]) -> dict[str, str]:
    return {"authorization": f"Bearer {TokenIssuer(KEY).issue('u1', roles)}"}


@pytest.fixture(scope="module")
def remote() -> TestClient:
    return _client(_app(verifier=TokenVerifier(_jwks)))


def _problem(response: Any, status: int) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert "meshop_" not in response.text  # no metrics leaked in the refusal


def test_a_remote_client_without_a_token_is_refused(remote: TestClient) -> None:
    _problem(remote.get("/metrics"), 401)
    _problem(remote.get("/metrics", headers={"authorization": "Bearer not-a-token"}), 401)


def test_a_remote_client_with_a_user_token_is_forbidden(remote: TestClient) -> None:
    _problem(remote.get("/metrics", headers=_bearer(["customer"])), 403)


def test_a_remote_client_with_an_admin_token_reads_the_metrics(remote: TestClient) -> None:
    response = remote.get("/metrics", headers=_bearer(["admin"]))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")


def test_a_loopback_client_needs_no_token() -> None:
    app = _app(verifier=TokenVerifier(_jwks))
    for address in (("127.0.0.1", 40000), ("::1", 40000)):
        assert _client(app, address).get("/metrics").status_code == 200


def test_a_remote_client_of_a_service_without_a_verifier_is_forbidden_even_with_an_admin_token() -> None:
    _problem(_client(_app(verifier=None)).get("/metrics", headers=_bearer(["admin"])), 403)


def test_metrics_off_is_404_for_everyone() -> None:
    app = _app(verifier=TokenVerifier(_jwks), metrics=False)
    _problem(_client(app, ("127.0.0.1", 40000)).get("/metrics"), 404)
    _problem(_client(app).get("/metrics", headers=_bearer(["admin"])), 404)
