"""`meshop deploy secrets`: every Secret the manifests name, fresh, usable as the processes read them."""

from __future__ import annotations

import base64
import stat
import subprocess
from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml
from typer.testing import CliRunner

from meshop.cli.main import app
from meshop.deploy.secrets import generate, identity_items, write
from meshop.mesh.errors import ConfigError
from meshop.mesh.security import scrape_token
from meshop.mesh.security.identity import CredentialFiles
from meshop.mesh.security.nats_auth import NatsCredentials
from meshop.mesh.service.settings import Settings
from meshop.runtime.nats_server import find_binary
from meshop.services import PROCESSES

PLAN_NAMES = {
    "meshop-identity",
    "meshop-identity-root",
    *(f"meshop-nats-{process}" for process in PROCESSES),
    "meshop-nats-server",
    "meshop-admin",
    "meshop-scrape",
    "meshop-database",
    "meshop-postgres",
}


def by_name(manifests: list[dict[str, Any]]) -> dict[str, dict[str, bytes]]:
    return {m["metadata"]["name"]: {k: base64.b64decode(v) for k, v in m["data"].items()} for m in manifests}


@pytest.fixture(scope="module")
def manifests() -> list[dict[str, Any]]:
    return generate(namespace="shop")


def test_every_secret_of_the_plan_is_generated_with_its_keys(manifests: list[dict[str, Any]]) -> None:
    data = by_name(manifests)
    assert set(data) == PLAN_NAMES
    assert set(data["meshop-identity"]) == {"trust.json", *(f"{p}.json" for p in PROCESSES)}
    assert set(data["meshop-identity-root"]) == {"root.json", "trust.json"}
    assert {key for name, keys in data.items() if name.startswith("meshop-nats-") for key in keys} == {
        "credentials",
        "auth.conf",
    }
    for manifest in manifests:
        assert (manifest["kind"], manifest["type"], manifest["metadata"]["namespace"]) == ("Secret", "Opaque", "shop")


def test_each_process_reads_its_credential_through_the_documented_items(
    manifests: list[dict[str, Any]], tmp_path: Path
) -> None:
    """The volume's items put `<process>.json` where mesh.security.identity looks: services/<process>.json."""
    identity = by_name(manifests)["meshop-identity"]
    files = {}
    for process in PROCESSES:
        mount = tmp_path / process
        for item in identity_items(process):  # what the kubelet does with a Secret volume's items
            (mount / item["path"]).parent.mkdir(parents=True, exist_ok=True)
            (mount / item["path"]).write_bytes(identity[item["key"]])
        files[process] = CredentialFiles(mount, process)
        assert sorted(p.name for p in (mount / "services").iterdir()) == [f"{process}.json"]  # no one else's key
    header = files["orders"].minter.header("payments")
    assert files["payments"].verifier.caller(header) == "orders"


def test_nats_users_match_the_server_config_and_it_loads(manifests: list[dict[str, Any]], tmp_path: Path) -> None:
    data = by_name(manifests)
    auth = data["meshop-nats-server"]["auth.conf"].decode()
    for process in PROCESSES:
        credentials = msgspec.json.decode(data[f"meshop-nats-{process}"]["credentials"], type=NatsCredentials)
        assert credentials.user == process
        assert f'"password": "{credentials.password}"' in auth
    (tmp_path / "auth.conf").write_text(auth)
    (tmp_path / "nats.conf").write_text('jetstream {store_dir: "store"}\ninclude "auth.conf"\n')
    checked = subprocess.run(
        [str(find_binary()), "-c", str(tmp_path / "nats.conf"), "-t"], capture_output=True, text=True, timeout=30
    )
    assert checked.returncode == 0, checked.stderr


def test_the_other_values_are_what_their_readers_accept(manifests: list[dict[str, Any]], tmp_path: Path) -> None:
    data = by_name(manifests)
    token = tmp_path / "token"
    token.write_bytes(data["meshop-scrape"]["token"])
    assert scrape_token.load(token) == data["meshop-scrape"]["token"]
    admin = data["meshop-admin"]["password"].decode()
    assert Settings(admin_password=admin).admin_password == admin
    url = data["meshop-database"]["url"].decode()
    postgres = data["meshop-postgres"]
    assert url == f"postgresql://meshop:{postgres['password'].decode()}@postgres:5432"
    assert postgres["user"] == b"meshop"
    assert (
        Settings(database_url=url).database_url_for("orders")
        == url.replace("postgresql://", "postgresql+asyncpg://") + "/meshop_orders"
    )


def test_every_run_makes_new_values() -> None:
    first, second = by_name(generate()), by_name(generate())
    for name, keys in first.items():
        for key, value in keys.items():
            if name != "meshop-postgres" or key != "user":
                assert value != second[name][key], (name, key)


def test_an_external_database_replaces_the_in_cluster_one() -> None:
    data = by_name(generate(database_url="postgresql://app:pw@db.example:5432"))
    assert "meshop-postgres" not in data
    assert data["meshop-database"]["url"] == b"postgresql://app:pw@db.example:5432"
    with pytest.raises(ConfigError, match="postgresql://"):
        generate(database_url="mysql://app:pw@db")


def test_the_files_are_private_and_never_overwritten(manifests: list[dict[str, Any]], tmp_path: Path) -> None:
    out = tmp_path / "secrets"
    paths = write(out, manifests)
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    assert {stat.S_IMODE(p.stat().st_mode) for p in paths} == {0o600}
    assert [yaml.safe_load(p.read_text()) for p in paths] == manifests
    with pytest.raises(ConfigError, match="exists"):
        write(out, manifests)


def test_the_command_prints_paths_and_the_apply_command_and_no_secret(tmp_path: Path) -> None:
    out = tmp_path / "s"
    result = CliRunner().invoke(app, ["deploy", "secrets", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1] == f"apply them with: kubectl apply --server-side -f {out}"
    values = [
        value
        for path in out.iterdir()
        for encoded in yaml.safe_load(path.read_text())["data"].values()
        for value in (encoded, base64.b64decode(encoded).decode())
        if len(value) >= 12  # not the PostgreSQL user name, "meshop"
    ]
    assert len(values) > 40
    assert not [value for value in values if value in result.output]
    again = CliRunner().invoke(app, ["deploy", "secrets", "--out", str(out)])
    assert again.exit_code == 2
    assert "generated fresh" in again.stderr
