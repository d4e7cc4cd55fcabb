"""The issuer CronJob's one API call: server-side apply of `meshop-identity`, checked on a fake API server."""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from meshop.deploy.kubernetes import FIELD_MANAGER, InCluster
from meshop.deploy.secrets import apply_identity, generate, identity_items
from meshop.mesh.errors import ConfigError
from meshop.mesh.security.identity import CredentialFiles, rotate_root
from meshop.services import PROCESSES

TOKEN = "service-account-token-abc"


def root_secret() -> dict[str, bytes]:
    [root] = [m for m in generate() if m["metadata"]["name"] == "meshop-identity-root"]
    return {key: base64.b64decode(value) for key, value in root["data"].items()}


class FakeApi:
    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.requests: list[dict[str, Any]] = []

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append(
            {
                "method": request.method,
                "path": request.path,
                "query": dict(request.query),
                "headers": dict(request.headers),
                "body": json.loads(body),
            }
        )
        if self.status != 200:
            status = {"kind": "Status", "message": 'secrets "meshop-identity" is forbidden: no patch', "code": 403}
            return web.json_response(status, status=self.status)
        return web.json_response(json.loads(body))


@pytest.fixture
async def api() -> AsyncIterator[tuple[FakeApi, InCluster]]:
    fake = FakeApi()
    application = web.Application()
    application.router.add_route("*", "/{tail:.*}", fake.handle)
    server = TestServer(application)
    await server.start_server()
    yield fake, InCluster(server=str(server.make_url("")).rstrip("/"), namespace="shop", token=TOKEN)
    await server.close()


@pytest.fixture
def root_dir(tmp_path: Path) -> Path:
    """The meshop-identity-root Secret as the CronJob's pod mounts it (read-only)."""
    directory = tmp_path / "root"
    directory.mkdir()
    root = root_secret()
    for key, value in root.items():
        (directory / key).write_bytes(value)
    directory.chmod(0o500)
    return directory


async def test_the_credentials_are_applied_server_side_with_the_pods_token(
    api: tuple[FakeApi, InCluster], root_dir: Path, tmp_path: Path
) -> None:
    fake, cluster = api
    where = await apply_identity(cluster, root_dir, list(PROCESSES), lifetime_s=1800)
    assert where == "shop/meshop-identity"
    [request] = fake.requests
    assert (request["method"], request["path"]) == ("PATCH", "/api/v1/namespaces/shop/secrets/meshop-identity")
    assert request["query"] == {"fieldManager": FIELD_MANAGER, "force": "true"}
    assert request["headers"]["Authorization"] == f"Bearer {TOKEN}"
    assert request["headers"]["Content-Type"] == "application/apply-patch+yaml"
    body = request["body"]
    assert (body["apiVersion"], body["kind"], body["metadata"]["name"]) == ("v1", "Secret", "meshop-identity")
    assert body["metadata"]["namespace"] == "shop"
    data = {key: base64.b64decode(value) for key, value in body["data"].items()}
    assert set(data) == {"trust.json", *(f"{p}.json" for p in PROCESSES)}
    assert data["trust.json"] == (root_dir / "trust.json").read_bytes()  # the bundle is kept, rotations included
    for process in ("orders", "payments"):  # mounted as the manifests mount it, the credentials work
        for item in identity_items(process):
            (tmp_path / process / item["path"]).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / process / item["path"]).write_bytes(data[item["key"]])
    orders, payments = (
        CredentialFiles(tmp_path / "orders", "orders"),
        CredentialFiles(tmp_path / "payments", "payments"),
    )
    assert payments.verifier.caller(orders.minter.header("payments")) == "orders"
    assert 1790 < json.loads(data["orders.json"])["expires_at"] - time.time() <= 1800


async def test_a_refusal_fails_with_the_api_servers_message_and_not_the_token(
    api: tuple[FakeApi, InCluster], root_dir: Path
) -> None:
    fake, cluster = api
    fake.status = 403
    with pytest.raises(ConfigError, match='403 secrets "meshop-identity" is forbidden') as caught:
        await apply_identity(cluster, root_dir, ["orders"])
    assert TOKEN not in str(caught.value)
    assert TOKEN not in repr(cluster)


async def test_no_root_mounted_fails_rather_than_making_a_new_one(
    api: tuple[FakeApi, InCluster], tmp_path: Path
) -> None:
    fake, cluster = api
    with pytest.raises(ConfigError, match="mount the meshop-identity-root Secret there"):
        await apply_identity(cluster, tmp_path, ["orders"])
    assert fake.requests == []
    assert os.listdir(tmp_path) == []  # nothing written either


async def test_a_rotated_in_root_signs_once_due(api: tuple[FakeApi, InCluster], tmp_path: Path) -> None:
    """`meshop identity rotate-root` run on a copy of the root Secret: the CronJob follows it."""
    fake, cluster = api
    directory = tmp_path / "root"
    directory.mkdir()
    for key, value in root_secret().items():
        (directory / key).write_bytes(value)
    following = rotate_root(directory, delay_s=0)
    await apply_identity(cluster, directory, ["orders"])
    credential = json.loads(base64.b64decode(fake.requests[0]["body"]["data"]["orders.json"]))
    certificate = json.loads(base64.urlsafe_b64decode(credential["certificate"].split(".")[0] + "=="))
    assert certificate["root"] == following.kid


def test_the_cluster_is_found_from_the_pods_service_account(tmp_path: Path) -> None:
    (tmp_path / "token").write_text(TOKEN + "\n")
    (tmp_path / "namespace").write_text("shop")
    (tmp_path / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    cluster = InCluster.from_pod(tmp_path, env)
    assert (cluster.server, cluster.namespace, cluster.token) == ("https://10.96.0.1:443", "shop", TOKEN)
    assert cluster.ca_file == tmp_path / "ca.crt"
    ipv6 = InCluster.from_pod(tmp_path, {"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "6443"})
    assert ipv6.server == "https://[fd00::1]:6443"
    with pytest.raises(ConfigError, match="KUBERNETES_SERVICE_HOST"):
        InCluster.from_pod(tmp_path, {})


def test_the_command_outside_a_pod_says_where_it_runs(monkeypatch: pytest.MonkeyPatch, root_dir: Path) -> None:
    from typer.testing import CliRunner

    from meshop.cli.main import app

    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    result = CliRunner().invoke(app, ["identity", "issue", "--kubernetes-secrets", "--dir", str(root_dir)])
    assert result.exit_code == 1
    assert "runs in a Kubernetes pod" in result.stderr
