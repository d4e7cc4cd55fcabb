"""Renew the shop's service credentials in Kubernetes: rewrite the Secret `meshop-identity`.

What the identity-issuer CronJob runs (`python -m meshop.runtime.k8s_identity`,
deploy/k8s/components/identity-issuer), more often than a certificate's lifetime / 2: it
copies the root key (Secret `meshop-identity-root`) and the current trust bundle into a
scratch directory, issues every process's credential there with `identity.provision` (the
one code path that makes identity keys), and replaces the Secret's keys (`trust.json`,
`<process>.json`) through the Kubernetes API with its service account, which may get and
patch that one Secret only. The kubelet refreshes the mounted files within about a minute
and each process switches to its renewed credential with no restart (`CredentialFiles`).

It never creates a root: without one it fails, rather than issue credentials nobody trusts.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import ssl
import sys
import tempfile
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from meshop.mesh.errors import ConfigError
from meshop.mesh.identity import MAX_CERTIFICATE_LIFETIME_S, ROOT_FILE, TRUST_FILE, credential_path, provision

__all__ = ["ApiClient", "issue_into_secret", "secret_data"]

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
#: The Secret every process mounts its credential from (deploy/k8s/base).
IDENTITY_SECRET = "meshop-identity"
#: Where the CronJob mounts the Secret meshop-identity-root (root.json) and meshop-identity's trust.json.
ROOT_DIR = Path("/etc/meshop/identity-root")
CURRENT_DIR = Path("/etc/meshop/identity")


def secret_data(directory: Path, services: Iterable[str]) -> dict[str, str]:
    """The Secret's `data` (base64) from an identity directory: the bundle and each credential."""
    files = {TRUST_FILE: directory / TRUST_FILE} | {f"{s}.json": credential_path(directory, s) for s in services}
    return {key: base64.b64encode(path.read_bytes()).decode() for key, path in files.items()}


@dataclass(frozen=True)
class ApiClient:
    """Just enough of the Kubernetes API: a JSON merge patch of one Secret."""

    base_url: str
    token: str
    namespace: str
    context: ssl.SSLContext | None = None

    @classmethod
    def in_cluster(cls) -> ApiClient:
        """The API server and credentials every pod with a mounted service account token has."""
        host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        if not host or not (SERVICE_ACCOUNT / "token").exists():
            raise ConfigError("not in a Kubernetes pod with a service account token")
        return cls(
            base_url=f"https://{host}:{port}" if ":" not in host else f"https://[{host}]:{port}",
            token=(SERVICE_ACCOUNT / "token").read_text().strip(),
            namespace=(SERVICE_ACCOUNT / "namespace").read_text().strip(),
            context=ssl.create_default_context(cafile=str(SERVICE_ACCOUNT / "ca.crt")),
        )

    def patch_secret(self, name: str, data: Mapping[str, str]) -> None:
        url = f"{self.base_url}/api/v1/namespaces/{self.namespace}/secrets/{name}"
        request = urllib.request.Request(  # noqa: S310 (the URL is the API server's, https in a cluster)
            url,
            data=json.dumps({"data": dict(data)}).encode(),
            method="PATCH",
            headers={"authorization": f"Bearer {self.token}", "content-type": "application/merge-patch+json"},
        )
        with urllib.request.urlopen(request, context=self.context, timeout=30) as response:  # noqa: S310
            response.read()


def issue_into_secret(
    api: ApiClient,
    *,
    root_dir: Path,
    current_dir: Path,
    services: Iterable[str],
    secret_name: str = IDENTITY_SECRET,
    lifetime_s: float = MAX_CERTIFICATE_LIFETIME_S,
) -> None:
    """Issue `services`' credentials from the root in `root_dir`, keeping `current_dir`'s bundle, into the Secret."""
    names = list(services)
    if not (root_dir / ROOT_FILE).exists():
        raise ConfigError(
            f"no {ROOT_FILE} in {root_dir}: the issuer never creates a root (Secret meshop-identity-root)"
        )
    with tempfile.TemporaryDirectory(prefix="identity-") as scratch:
        work = Path(scratch)
        for source in (*root_dir.glob("root*.json"), current_dir / TRUST_FILE):
            if source.is_file():
                shutil.copyfile(source, work / source.name)
        provision(work, names, lifetime_s=lifetime_s)
        api.patch_secret(secret_name, secret_data(work, names))


def main() -> int:
    from meshop.services import PROCESSES

    try:
        issue_into_secret(
            ApiClient.in_cluster(),
            root_dir=ROOT_DIR,
            current_dir=CURRENT_DIR,
            services=PROCESSES,
        )
    except (ConfigError, OSError) as exc:
        print(f"meshop identity issuer: {exc}", file=sys.stderr)
        return 1
    print(f"renewed the credentials of {len(PROCESSES)} processes in Secret meshop-identity")
    return 0


if __name__ == "__main__":
    sys.exit(main())
