"""The one Kubernetes API call meshop makes: server-side apply of a Secret, from inside a pod.

The issuer CronJob (`meshop identity issue --kubernetes-secrets`) re-issues the service
credentials, which live at most an hour, into `meshop-identity`. It authenticates with its
pod's service-account token and verifies the API server with the account's CA; its Role
needs `get` and `patch` on that one Secret (resourceNames: [meshop-identity]). Server-side
apply with a field manager of its own: it owns the `data` keys it writes, and
`--force` takes them over from the `kubectl apply` that created the Secret.
"""

from __future__ import annotations

import json
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

from meshop.mesh.errors import ConfigError

__all__ = ["FIELD_MANAGER", "SERVICE_ACCOUNT_DIR", "InCluster", "apply"]

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
FIELD_MANAGER = "meshop-identity-issuer"


@dataclass(frozen=True)
class InCluster:
    """Where the API server is and how this pod proves who it is."""

    server: str
    namespace: str
    token: str
    #: The CA the API server's certificate is checked against (None: the system's, or plain http).
    ca_file: Path | None = None

    def __repr__(self) -> str:  # never print the token
        return f"InCluster(server={self.server!r}, namespace={self.namespace!r}, token=***)"

    @classmethod
    def from_pod(cls, account_dir: Path = SERVICE_ACCOUNT_DIR, environ: Mapping[str, str] | None = None) -> InCluster:
        """The API server of the cluster this pod runs in, and its service account's credentials."""
        env = os.environ if environ is None else environ
        host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT", "443")
        if not host:
            raise ConfigError("KUBERNETES_SERVICE_HOST is not set: --kubernetes-secrets runs in a Kubernetes pod")
        try:
            token = (account_dir / "token").read_text().strip()
            namespace = (account_dir / "namespace").read_text().strip()
        except OSError as exc:
            raise ConfigError(f"no service-account token in {account_dir}: {exc.strerror}") from None
        server = f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"
        ca = account_dir / "ca.crt"
        return cls(server=server, namespace=namespace, token=token, ca_file=ca if ca.exists() else None)


async def apply(cluster: InCluster, manifest: dict[str, Any], *, timeout_s: float = 30.0) -> dict[str, Any]:
    """Server-side apply `manifest` (a namespaced core/v1 object) as FIELD_MANAGER; the object as stored."""
    kind = manifest["kind"]
    name = manifest["metadata"]["name"]
    namespace = manifest["metadata"].get("namespace") or cluster.namespace
    body = {**manifest, "metadata": {**manifest["metadata"], "namespace": namespace}}
    url = (
        f"{cluster.server}/api/v1/namespaces/{quote(namespace)}/{kind.lower()}s/{quote(name)}"
        f"?fieldManager={FIELD_MANAGER}&force=true"
    )
    headers = {
        "authorization": f"Bearer {cluster.token}",
        "content-type": "application/apply-patch+yaml",  # JSON is YAML
        "accept": "application/json",
    }
    context: ssl.SSLContext | bool = True
    if cluster.ca_file is not None:
        context = ssl.create_default_context(cafile=str(cluster.ca_file))
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as session,
            session.patch(url, data=json.dumps(body), headers=headers, ssl=context) as response,
        ):
            text = await response.text()
            if response.status not in (200, 201):
                raise ConfigError(
                    f"the Kubernetes API refused to apply {kind} {namespace}/{name}: {_reason(response.status, text)}"
                )
            result: dict[str, Any] = json.loads(text)
            return result
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise ConfigError(f"cannot reach the Kubernetes API at {cluster.server}: {exc!r}") from None


def _reason(status: int, text: str) -> str:
    """The `message` of the API server's Status object (it never echoes the token)."""
    try:
        message = json.loads(text).get("message")
    except (ValueError, AttributeError):
        message = None
    return f"{status} {message or text[:200]}"
