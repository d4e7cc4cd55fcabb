"""The container image the system tests run, and the host services its containers reach.

`build_image()` builds `localhost/meshop:dev` with deploy/image/build.py once per test
session, and not at all when the image was built from this same tree and base already
(its tree-digest label matches). The base defaults to `localhost/debian-python:bookworm`
(deploy/image/base-image.sh; no registry can be pulled from here), `MESHOP_TEST_IMAGE_BASE`
overrides it. Containers reach the host at the podman bridge's gateway (`host_address()`).
"""

from __future__ import annotations

import asyncio
import functools
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

from meshop.mesh.security.identity import TRUST_FILE, credential_path, provision
from meshop.runtime.nats_server import EmbeddedNats
from meshop.runtime.nats_users import credentials_file, ensure_users, render_server_config

ROOT = Path(__file__).parents[2]
IMAGE = "localhost/meshop"
BASE = os.environ.get("MESHOP_TEST_IMAGE_BASE", "localhost/debian-python:bookworm")
#: The uid and gid the image runs as; mounted secrets are made readable to this group, as a
#: pod's `fsGroup` makes them.
UID = 1000


def _missing(what: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{what} (.ci/run installs podman and builds the base image)")
    pytest.skip(what)


def podman() -> str:
    """The podman binary: the system tests use podman's own flags (`--read-only-tmpfs`, `image mount`)."""
    found = shutil.which("podman")
    if found is None:
        _missing("podman is not installed (apt-get install podman runc, see MACHINE.md)")
    return str(found)


def build_module() -> ModuleType:
    """deploy/image/build.py, imported (it is a script, not a package module)."""
    name = "meshop_image_build"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "deploy" / "image" / "build.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@functools.cache
def build_image() -> str:
    """`localhost/meshop:dev`, built from this tree (once per session; reused when unchanged)."""
    engine = podman()
    if subprocess.run([engine, "image", "exists", BASE], check=False).returncode != 0:
        _missing(f"no base image {BASE}: run deploy/image/base-image.sh")
    build = build_module()
    try:
        return str(build.build(image=IMAGE, base=BASE, engine=engine, if_changed=True, out=sys.stderr))
    except build.BuildError as exc:
        pytest.fail(str(exc))


def host_address() -> str:
    """The address containers on podman's default network reach the host at (its bridge's gateway)."""
    found = subprocess.run(
        [podman(), "network", "inspect", "podman", "--format", "{{range .Subnets}}{{.Gateway}} {{end}}"],
        capture_output=True,
        text=True,
        check=True,
    )
    return found.stdout.split()[0]


@dataclass(frozen=True)
class HostShop:
    """What a meshop container needs from outside: NATS and the files its secrets would be."""

    nats_url: str  # as containers reach it
    #: `<process>/nats/credentials` and `<process>/identity/{trust.json, services/<process>.json}`,
    #: readable by group UID (as Secrets mounted with fsGroup 1000, defaultMode 0440).
    secrets: Path

    def mounts(self, process: str) -> list[str]:
        """`podman run` options mounting `process`'s secrets read-only, and the env naming them."""
        base = self.secrets / process
        return [
            *("--volume", f"{base / 'nats'}:/etc/meshop/nats:ro"),
            *("--volume", f"{base / 'identity'}:/etc/meshop/identity:ro"),
            *("--env", "MESHOP_NATS_CREDENTIALS_FILE=/etc/meshop/nats/credentials"),
            *("--env", "MESHOP_IDENTITY_DIR=/etc/meshop/identity"),
            *("--env", f"MESHOP_NATS_URL={self.nats_url}"),
        ]


@contextmanager
def host_shop(directory: Path, processes: list[str]) -> Iterator[HostShop]:
    """A secured NATS (the shop's users, allow-listed subjects) on the host, listening where
    containers reach it, and each process's NATS credentials and service identity as files."""
    users = ensure_users(directory / "data")
    identity = directory / "identity"
    provision(identity, processes)
    secrets = directory / "secrets"
    for process in processes:
        _secret(credentials_file(directory / "data", process), secrets / process / "nats" / "credentials")
        _secret(identity / TRUST_FILE, secrets / process / "identity" / TRUST_FILE)
        target = credential_path(secrets / process / "identity", process)
        _secret(credential_path(identity, process), target)
    _readable_by_the_image(secrets)
    server = EmbeddedNats(
        directory / "data" / "nats", host="0.0.0.0", authorization=render_server_config(users)
    )  # 0.0.0.0: the bridge exists only once a container runs; every user has a password
    asyncio.run(server.start())
    try:
        yield HostShop(f"nats://{host_address()}:{server.port}", secrets)
    finally:
        asyncio.run(server.stop())


def _secret(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)


def _readable_by_the_image(directory: Path) -> None:
    """Files 0440 and folders 0750, group UID: what a Secret volume with fsGroup 1000 gives."""
    for path in (directory, *directory.rglob("*")):
        if os.geteuid() == 0:
            os.chown(path, 0, UID)
            os.chmod(path, 0o750 if path.is_dir() else 0o440)
        else:  # rootless: the container's uid 1000 is not in our group; anyone may read the test's copies
            os.chmod(path, 0o755 if path.is_dir() else 0o444)


def container_json(container: str, template: str = "{{json .State}}") -> dict[str, object]:
    found = subprocess.run([podman(), "inspect", "--format", template, container], capture_output=True, text=True)
    return dict(json.loads(found.stdout)) if found.returncode == 0 else {}
