"""The in-cluster issuer renews `meshop-identity` from the root, against a fake Kubernetes API."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

from meshop.mesh.errors import ConfigError, Unauthorized
from meshop.mesh.identity import CredentialFiles, provision, rotate_root
from meshop.runtime.k8s_identity import ApiClient, issue_into_secret


class FakeApi:
    """Records the requests an ApiClient makes; answers 200, or `status` when set."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.status = 200
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_PATCH(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                fake.requests.append(
                    {
                        "path": self.path,
                        "headers": {k.lower(): v for k, v in self.headers.items()},
                        "body": json.loads(body),
                    }
                )
                self.send_response(fake.status)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def api() -> Iterator[FakeApi]:
    fake = FakeApi()
    thread = threading.Thread(target=fake.server.serve_forever, daemon=True)
    thread.start()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()


def _issue(api: FakeApi, root: Path, current: Path, services: list[str]) -> None:
    client = ApiClient(base_url=api.url, token="sa-token", namespace="shop")
    issue_into_secret(client, root_dir=root, current_dir=current, services=services)


def _unpack(data: dict[str, str], into: Path) -> Path:
    """The Secret's files as the pods see them (items: `<process>.json` -> services/<process>.json)."""
    (into / "services").mkdir(parents=True)
    for key, value in data.items():
        path = into / key if key == "trust.json" else into / "services" / key
        path.write_bytes(base64.b64decode(value))
    return into


def test_the_secret_gets_credentials_the_other_processes_trust(api: FakeApi, tmp_path: Path) -> None:
    root = tmp_path / "root"
    provision(root, [])  # the root and its bundle, as `meshop deploy secrets` makes them
    _issue(api, root, root, ["orders", "catalog"])

    [request] = api.requests
    assert request["path"] == "/api/v1/namespaces/shop/secrets/meshop-identity"
    assert request["headers"]["authorization"] == "Bearer sa-token"
    assert request["headers"]["content-type"] == "application/merge-patch+json"
    data = request["body"]["data"]
    assert set(data) == {"trust.json", "orders.json", "catalog.json"}
    pod = _unpack(data, tmp_path / "pod")
    orders, catalog = CredentialFiles(pod, "orders"), CredentialFiles(pod, "catalog")
    assert catalog.verifier.caller(orders.minter.header("catalog")) == "orders"


def test_the_trust_bundle_in_use_is_kept(api: FakeApi, tmp_path: Path) -> None:
    """A bundle holding a rotated-in root stays as it is: renewal must not drop a trusted root."""
    root = tmp_path / "root"
    provision(root, [])
    rotate_root(root)  # trust.json now holds two roots
    current = tmp_path / "current"
    current.mkdir()
    (current / "trust.json").write_bytes((root / "trust.json").read_bytes())
    _issue(api, root, current, ["users"])
    sent = base64.b64decode(api.requests[0]["body"]["data"]["trust.json"])
    assert sent == (current / "trust.json").read_bytes()
    assert len(json.loads(sent)["roots"]) == 2


def test_without_a_root_nothing_is_issued(api: FakeApi, tmp_path: Path) -> None:
    """A new root would sign credentials no process trusts: refuse instead."""
    with pytest.raises(ConfigError, match="never creates a root"):
        _issue(api, tmp_path, tmp_path, ["users"])
    assert api.requests == []


def test_a_credential_from_another_root_is_refused(api: FakeApi, tmp_path: Path) -> None:
    """The check above can fail: a credential issued by a root the pods do not trust is refused."""
    provision(tmp_path / "root", [])
    provision(tmp_path / "other", [])
    _issue(api, tmp_path / "other", tmp_path / "root", ["orders", "catalog"])  # the bundle trusts the first root only
    pod = _unpack(api.requests[0]["body"]["data"], tmp_path / "pod")
    orders, catalog = CredentialFiles(pod, "orders"), CredentialFiles(pod, "catalog")
    with pytest.raises(Unauthorized):
        catalog.verifier.caller(orders.minter.header("catalog"))


def test_an_api_refusal_is_an_error(api: FakeApi, tmp_path: Path) -> None:
    provision(tmp_path, [])
    api.status = 403
    with pytest.raises(OSError, match="403"):
        _issue(api, tmp_path, tmp_path, ["users"])
