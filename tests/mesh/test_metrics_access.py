"""Who may read /metrics: the scrape token, loopback clients, or a remote client with an admin token.

Every end-to-end client is loopback, so the remote branch is driven here through a
service's ASGI app with a non-loopback client address in the scope.
"""

from __future__ import annotations

import asyncio
import hmac
import stat
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from starlette.testclient import TestClient

from meshop.mesh.api.routing import Api
from meshop.mesh.errors import ConfigError, Unauthorized
from meshop.mesh.security import scrape_token
from meshop.mesh.security.tokens import SigningKey, TokenIssuer, TokenVerifier
from meshop.mesh.service.lifecycle import Service, ServiceDefinition
from meshop.mesh.service.settings import Settings
from meshop.mesh.telemetry.metrics import Metrics

KEY = SigningKey.generate()
REMOTE = ("203.0.113.7", 40000)  # TEST-NET-3: not this machine


async def _jwks() -> dict[str, Any]:
    return {"keys": [KEY.public_jwk()]}


async def _build(_runtime: Any) -> Api:
    raise AssertionError("not started: the app is built directly")


def _app(*, verifier: TokenVerifier | None, metrics: bool = True, **settings: Any) -> Any:
    service = Service(ServiceDefinition(name="demo", build=_build), Settings(metrics=metrics, **settings))
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


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    return scrape_token.create(tmp_path / "data" / "scrape-token")


def _scrape(token_file: Path) -> dict[str, str]:
    return {"authorization": f"Bearer {token_file.read_text().strip()}"}


def test_the_scrape_token_is_made_once_random_and_private(tmp_path: Path) -> None:
    path = scrape_token.create(tmp_path / "data" / "scrape-token")
    token = path.read_text().strip()
    assert len(token) >= 43  # 32 random bytes, base64url
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert scrape_token.create(path).read_text().strip() == token  # kept, not replaced
    assert scrape_token.create(tmp_path / "other").read_text().strip() != token


def test_a_missing_or_weak_token_file_fails_at_start_with_the_settings_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="MESHOP_METRICS_TOKEN_FILE"):
        _app(verifier=None, metrics_token_file=tmp_path / "missing")
    short = tmp_path / "short"
    short.write_text("secret\n")
    with pytest.raises(ConfigError, match=r"MESHOP_METRICS_TOKEN_FILE.*at least 32"):
        _app(verifier=None, metrics_token_file=short)


def test_a_remote_client_with_the_scrape_token_reads_the_metrics(token_file: Path) -> None:
    for verifier in (TokenVerifier(_jwks), None):
        response = _client(_app(verifier=verifier, metrics_token_file=token_file)).get(
            "/metrics", headers=_scrape(token_file)
        )
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")


def test_a_wrong_scrape_token_is_401(token_file: Path, tmp_path: Path) -> None:
    other = scrape_token.create(tmp_path / "other-token")
    for verifier in (TokenVerifier(_jwks), None):
        app = _app(verifier=verifier, metrics_token_file=token_file)
        _problem(_client(app).get("/metrics", headers=_scrape(other)), 401)
        _problem(_client(app).get("/metrics"), 401)


def test_the_scrape_token_is_compared_in_constant_time(token_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[tuple[bytes, bytes]] = []
    original = hmac.compare_digest

    def compare_digest(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return original(a, b)

    monkeypatch.setattr(scrape_token.hmac, "compare_digest", compare_digest)
    app = _app(verifier=None, metrics_token_file=token_file)
    assert _client(app).get("/metrics", headers=_scrape(token_file)).status_code == 200
    assert compared == [(token_file.read_text().strip().encode(),) * 2]


def test_the_scrape_token_is_no_access_token(token_file: Path) -> None:
    """Anywhere else (a user's or an admin's operation, here or behind the gateway) it is refused."""
    verifier = TokenVerifier(_jwks)
    with pytest.raises(Unauthorized):
        asyncio.run(verifier.verify_header(_scrape(token_file)["authorization"]))


def test_without_the_loopback_exemption_a_local_client_needs_the_token_too(token_file: Path) -> None:
    app = _app(verifier=TokenVerifier(_jwks), metrics_token_file=token_file, metrics_loopback=False)
    local = _client(app, ("127.0.0.1", 40000))
    _problem(local.get("/metrics"), 401)
    assert local.get("/metrics", headers=_scrape(token_file)).status_code == 200
