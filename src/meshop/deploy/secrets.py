"""Every Secret the shop needs on Kubernetes, generated fresh (`meshop deploy secrets`).

Nothing secret lives in the repository, an image or a ConfigMap (decision 0022): this module
makes the values and writes them as Secret manifests (mode 0600, in a 0700 directory) for
`kubectl apply --server-side -f DIR`. The names and keys are the manifests' interface:

| Secret                  | keys                                 | mounted / used as                              |
|-------------------------|--------------------------------------|------------------------------------------------|
| `meshop-identity`       | `trust.json`, `<process>.json`       | `/etc/meshop/identity` (see `identity_items`)  |
| `meshop-identity-root`  | `root.json`, `trust.json`            | the issuer CronJob only (`identity_secret`)    |
| `meshop-nats-<process>` | `credentials`                        | `MESHOP_NATS_CREDENTIALS_FILE`                 |
| `meshop-nats-server`    | `auth.conf`                          | included by the NATS server's configuration    |
| `meshop-admin`          | `password`                           | `MESHOP_ADMIN_PASSWORD_FILE` (users)           |
| `meshop-scrape`         | `token`                              | `MESHOP_METRICS_TOKEN_FILE`, Prometheus        |
| `meshop-database`       | `url`                                | `MESHOP_DATABASE_URL_FILE`                     |
| `meshop-postgres`       | `user`, `password`                   | the in-cluster PostgreSQL (when generated)     |

A Secret key cannot hold `/`, while a process reads its credential at
`<identity dir>/services/<process>.json` (`mesh.security.identity.credential_path`): each pod mounts
`meshop-identity` with the `items` of `identity_items(process)`, which also keeps every
other process's private key out of the pod.
"""

from __future__ import annotations

import base64
import os
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from meshop.mesh.errors import ConfigError
from meshop.mesh.security.identity import (
    MAX_CERTIFICATE_LIFETIME_S,
    NEXT_ROOT_FILE,
    ROOT_FILE,
    TRUST_FILE,
    credential_path,
)
from meshop.mesh.security.identity import provision as provision_identity
from meshop.runtime.nats_users import new_credentials, render_server_config
from meshop.services import PROCESSES

if TYPE_CHECKING:
    from meshop.deploy.kubernetes import InCluster

__all__ = [
    "IDENTITY_ROOT_SECRET",
    "IDENTITY_SECRET",
    "apply_identity",
    "generate",
    "identity_items",
    "identity_secret",
    "issue_identity",
    "write",
]

IDENTITY_SECRET = "meshop-identity"
IDENTITY_ROOT_SECRET = "meshop-identity-root"
POSTGRES_USER = "meshop"
#: Where the in-cluster PostgreSQL answers (the manifests' Service `postgres`).
POSTGRES_HOST = "postgres:5432"
LABELS = {"app.kubernetes.io/part-of": "meshop"}


def secret(name: str, data: dict[str, bytes], *, namespace: str | None = None) -> dict[str, Any]:
    """A Secret manifest (values base64-encoded under `data`, the field the issuer updates)."""
    metadata: dict[str, Any] = {"name": name, "labels": dict(LABELS)}
    if namespace is not None:
        metadata["namespace"] = namespace
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata,
        "type": "Opaque",
        "data": {key: base64.b64encode(value).decode() for key, value in sorted(data.items())},
    }


def identity_items(process: str) -> list[dict[str, str]]:
    """The `items` of a pod's `meshop-identity` volume: the trust bundle and its own credential."""
    return [
        {"key": TRUST_FILE, "path": TRUST_FILE},
        {"key": f"{process}.json", "path": credential_path(Path(), process).as_posix()},
    ]


def issue_identity(
    root_dir: Path, processes: list[str], *, lifetime_s: float = MAX_CERTIFICATE_LIFETIME_S
) -> dict[str, bytes]:
    """`meshop-identity`'s data: the trust bundle and a fresh credential per process.

    Issued from the root in `root_dir` (`root.json`, `trust.json`, and `root.next.json`
    while a rotation is under way; a read-only Secret mount will do) by `mesh.security.identity`'s
    one code path, in a private temporary copy.
    """
    if not (root_dir / ROOT_FILE).is_file():
        raise ConfigError(f"no {ROOT_FILE} in {root_dir}: mount the {IDENTITY_ROOT_SECRET} Secret there")
    with tempfile.TemporaryDirectory(prefix="meshop-identity-") as tmp:
        work = Path(tmp)
        for name in (ROOT_FILE, NEXT_ROOT_FILE, TRUST_FILE):
            if (root_dir / name).is_file():
                shutil.copyfile(root_dir / name, work / name)
        provision_identity(work, processes, lifetime_s=lifetime_s)
        data = {TRUST_FILE: (work / TRUST_FILE).read_bytes()}
        for process in processes:
            data[f"{process}.json"] = credential_path(work, process).read_bytes()
    return data


def identity_secret(
    data: dict[str, bytes], *, name: str = IDENTITY_SECRET, namespace: str | None = None
) -> dict[str, Any]:
    return secret(name, data, namespace=namespace)


def generate(*, database_url: str | None = None, namespace: str | None = None) -> list[dict[str, Any]]:
    """Every Secret the shop needs, with values made now (a new root of trust, new passwords).

    `database_url`: an external PostgreSQL server (`postgresql://user:password@host:5432`);
    None: one for the in-cluster PostgreSQL with a generated password.
    """
    manifests = []
    processes = list(PROCESSES)
    with tempfile.TemporaryDirectory(prefix="meshop-root-") as tmp:
        root_dir = Path(tmp)
        provision_identity(root_dir, [])  # a new root and its trust bundle
        root = {name: (root_dir / name).read_bytes() for name in (ROOT_FILE, TRUST_FILE)}
        manifests.append(secret(IDENTITY_ROOT_SECRET, root, namespace=namespace))
        manifests.append(identity_secret(issue_identity(root_dir, processes), namespace=namespace))
    users = {process: new_credentials(process) for process in processes}
    for process, credentials in users.items():
        credentials_file = msgspec.json.encode(credentials)
        manifests.append(secret(f"meshop-nats-{process}", {"credentials": credentials_file}, namespace=namespace))
    auth = render_server_config(users).encode()
    manifests.append(secret("meshop-nats-server", {"auth.conf": auth}, namespace=namespace))
    manifests.append(secret("meshop-admin", {"password": _random().encode()}, namespace=namespace))
    manifests.append(secret("meshop-scrape", {"token": secrets.token_urlsafe(32).encode()}, namespace=namespace))
    if database_url is None:
        password = _random()
        database_url = f"postgresql://{POSTGRES_USER}:{password}@{POSTGRES_HOST}"
        postgres = {"user": POSTGRES_USER.encode(), "password": password.encode()}
        manifests.append(secret("meshop-postgres", postgres, namespace=namespace))
    elif not database_url.startswith(("postgresql://", "postgres://")):
        raise ConfigError(f"--database-url must be a postgresql:// URL, not {database_url.split(':')[0]}:")
    manifests.append(secret("meshop-database", {"url": database_url.encode()}, namespace=namespace))
    return manifests


def _random() -> str:
    """A password: 32 URL-safe characters (it goes into a database URL unescaped)."""
    return secrets.token_urlsafe(24)


def write(directory: Path, manifests: list[dict[str, Any]]) -> list[Path]:
    """One `<name>.yaml` per Secret in `directory` (0700), each 0600; refuses to overwrite one.

    Fresh values replace a running shop's keys and passwords all at once: never by accident.
    """
    from meshop.deploy._yaml import dump_all

    paths = [directory / f"{manifest['metadata']['name']}.yaml" for manifest in manifests]
    existing = [path for path in paths if path.exists()]
    if existing:
        raise ConfigError(f"{existing[0]} exists: these Secrets are generated fresh; choose a new directory")
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(directory, 0o700)
    for path, manifest in zip(paths, manifests, strict=True):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(dump_all([manifest]))
    return paths


async def apply_identity(
    cluster: InCluster,
    root_dir: Path,
    processes: list[str],
    *,
    lifetime_s: float = MAX_CERTIFICATE_LIFETIME_S,
    name: str = IDENTITY_SECRET,
) -> str:
    """Re-issue `processes`' credentials from the root in `root_dir` into the Secret `name`; its `namespace/name`.

    What the issuer CronJob runs: every pod sees the renewed files within the kubelet's
    sync period (a minute or so) and switches to them without a restart.
    """
    from meshop.deploy.kubernetes import apply

    data = issue_identity(root_dir, processes, lifetime_s=lifetime_s)
    stored = await apply(cluster, identity_secret(data, name=name, namespace=cluster.namespace))
    return f"{stored['metadata']['namespace']}/{stored['metadata']['name']}"
