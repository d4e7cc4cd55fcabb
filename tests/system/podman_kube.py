"""Run rendered Kubernetes objects with podman itself: a kubelet small enough to read.

Debian's podman (4.3) `kube play` knows Pods, Deployments and ConfigMaps, not StatefulSets,
Jobs or Services, and it quietly ignores fields it does not know. This runner takes the
objects `kubectl kustomize deploy/k8s/overlays/local` renders and runs their pod specs with
`podman pod create` + `podman run --pod` (one podman pod per replica, on a network of its own),
honouring each field it sees, and **refuses any field it does not know** (`Unsupported`,
listing every such field's path): the allow-list below is walked over every object before
anything starts, so a manifest that passes here is one whose every field was acted on.

How each field is honoured:

- image (`--pull=never`: no registry is reachable, so `imagePullPolicy: Always` is refused),
  command → `--entrypoint`, args → the container's arguments, `$(VAR)` expanded as the kubelet
  does, workingDir;
- env: value, valueFrom secretKeyRef / configMapKeyRef / fieldRef (metadata.name, namespace,
  uid, labels['k'], annotations['k'], spec.nodeName, spec.serviceAccountName, status.podIP,
  status.podIPs, status.hostIP) / resourceFieldRef; envFrom with prefix; the Service links
  (`<SVC>_SERVICE_HOST`, ...) unless enableServiceLinks is false; given to podman in a 0600
  env file, never on a command line;
- status.podIP: every pod's address is chosen before it starts (`podman pod create --ip`), so
  that it can be given to the process and to every other pod's /etc/hosts;
- Services: no cluster DNS here, so every pod gets `--add-host` for each Service name (short and
  namespaced forms) → the address of the first running pod it selects (or of the host, for a
  workload the caller runs outside podman: `external`), and each StatefulSet pod's
  `<pod>.<service>` name;
- volumes: Secrets, ConfigMaps and projected sources written as files (items, mode,
  defaultMode; group fsGroup and g+r when fsGroup is set, as the kubelet does) and mounted
  read-only; emptyDir → a tmpfs volume (sizeLimit → size; mode 0777, group fsGroup with
  setgid); PVCs and volumeClaimTemplates → named volumes (group fsGroup, setgid, g+rwx);
  subPath; readOnly;
- securityContext (pod and container, the container's winning): runAsUser/runAsGroup →
  `--user`, runAsNonRoot checked against the effective uid (the image's, numeric, when unset),
  fsGroup and supplementalGroups → `--group-add`, readOnlyRootFilesystem → `--read-only
  --read-only-tmpfs=false` (no free /tmp: a writable path must be a declared volume),
  capabilities → `--cap-drop`/`--cap-add`, allowPrivilegeEscalation: false →
  `no-new-privileges`, seccompProfile RuntimeDefault → podman's default profile;
- resources: limits → `--memory`/`--cpus`, requests → `--memory-reservation`/`--cpu-shares`;
- probes (startup, readiness, liveness; httpGet, tcpSocket, exec): polled by this runner from
  the host over the bridge (the image has no curl for `--health-cmd`), with their delay,
  period, timeout and thresholds; a failed liveness or startup probe restarts the container;
- restartPolicy → `--restart`; lifecycle.preStop (exec, sleep, httpGet) run before
  `podman stop -t <what is left of terminationGracePeriodSeconds>`; initContainers run in
  order to completion first;
- topologySpreadConstraints and nodeSelector are checked against the one node's labels (one
  node: every skew is 0, but DoNotSchedule on a label the node lacks leaves the pod Pending,
  as the scheduler would);
- Jobs: backoffLimit, activeDeadlineSeconds; Deployment and StatefulSet rollout fields
  (strategy, revisionHistoryLimit, ...) are accepted but have nothing to act on: this runner
  creates and removes pods, it never rolls one set out over another.

Kinds with no pod to run (ServiceAccount, PodDisruptionBudget, HorizontalPodAutoscaler,
NetworkPolicy, RBAC) are listed in `Cluster.not_run` with why: podman enforces none of them.
Everything the runner creates carries the label `meshop.test/run=<run id>`; `leftovers()`
lists what is still there.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import json
import math
import os
import random
import re
import secrets
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LABEL = "meshop.test/run"
NODE_LABELS = {"kubernetes.io/hostname": "podman", "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"}


class Unsupported(Exception):
    """A rendered field this runner cannot honour (the message lists every one)."""


class PodFailed(Exception):
    """A pod did not get ready, a Job failed, or a container could not start."""


# --- the allow-list ---------------------------------------------------------------------
# A schema is: LEAF (any scalar), FREE (a map of strings to strings), a dict (an object whose
# keys are listed), ListOf(schema), or OneOf(values) (a scalar among these).


class _Leaf:
    def __repr__(self) -> str:
        return "LEAF"


class _Free:
    def __repr__(self) -> str:
        return "FREE"


LEAF = _Leaf()
FREE = _Free()


@dataclass(frozen=True)
class ListOf:
    item: Any


@dataclass(frozen=True)
class OneOf:
    values: tuple[Any, ...]


METADATA = {"name": LEAF, "namespace": LEAF, "labels": FREE, "annotations": FREE}
SELECTOR = {"matchLabels": FREE}
KEY_TO_PATH = ListOf({"key": LEAF, "path": LEAF, "mode": LEAF})
HTTP_GET = {
    "path": LEAF,
    "port": LEAF,
    "scheme": OneOf(("HTTP",)),
    "httpHeaders": ListOf({"name": LEAF, "value": LEAF}),
}
PROBE = {
    "httpGet": HTTP_GET,
    "tcpSocket": {"port": LEAF},
    "exec": {"command": ListOf(LEAF)},
    "initialDelaySeconds": LEAF,
    "periodSeconds": LEAF,
    "timeoutSeconds": LEAF,
    "successThreshold": LEAF,
    "failureThreshold": LEAF,
}
HANDLER = {"exec": {"command": ListOf(LEAF)}, "sleep": {"seconds": LEAF}, "httpGet": HTTP_GET}
SECCOMP = {"type": OneOf(("RuntimeDefault",))}
CONTAINER_SECURITY = {
    "runAsUser": LEAF,
    "runAsGroup": LEAF,
    "runAsNonRoot": LEAF,
    "readOnlyRootFilesystem": LEAF,
    "allowPrivilegeEscalation": LEAF,
    "privileged": OneOf((False,)),
    "capabilities": {"drop": ListOf(LEAF), "add": ListOf(LEAF)},
    "seccompProfile": SECCOMP,
}
POD_SECURITY = {
    "runAsUser": LEAF,
    "runAsGroup": LEAF,
    "runAsNonRoot": LEAF,
    "fsGroup": LEAF,
    "fsGroupChangePolicy": OneOf(("Always", "OnRootMismatch")),  # the runner always sets it
    "supplementalGroups": ListOf(LEAF),
    "seccompProfile": SECCOMP,
}
RESOURCES = {
    "limits": {"cpu": LEAF, "memory": LEAF},
    "requests": {"cpu": LEAF, "memory": LEAF},
}
ENV = {
    "name": LEAF,
    "value": LEAF,
    "valueFrom": {
        "secretKeyRef": {"name": LEAF, "key": LEAF, "optional": LEAF},
        "configMapKeyRef": {"name": LEAF, "key": LEAF, "optional": LEAF},
        "fieldRef": {"fieldPath": LEAF, "apiVersion": OneOf(("v1",))},
        "resourceFieldRef": {"containerName": LEAF, "resource": LEAF, "divisor": LEAF},
    },
}
CONTAINER = {
    "name": LEAF,
    "image": LEAF,
    "imagePullPolicy": OneOf(("IfNotPresent", "Never")),
    "command": ListOf(LEAF),
    "args": ListOf(LEAF),
    "workingDir": LEAF,
    "env": ListOf(ENV),
    "envFrom": ListOf(
        {
            "prefix": LEAF,
            "secretRef": {"name": LEAF, "optional": LEAF},
            "configMapRef": {"name": LEAF, "optional": LEAF},
        }
    ),
    "ports": ListOf({"name": LEAF, "containerPort": LEAF, "protocol": OneOf(("TCP", "UDP"))}),
    "volumeMounts": ListOf({"name": LEAF, "mountPath": LEAF, "readOnly": LEAF, "subPath": LEAF}),
    "securityContext": CONTAINER_SECURITY,
    "resources": RESOURCES,
    "startupProbe": PROBE,
    "readinessProbe": PROBE,
    "livenessProbe": PROBE,
    "lifecycle": {"preStop": HANDLER},
    # The kubelet's defaults, harmless here: the message file is not read by anyone.
    "terminationMessagePath": OneOf(("/dev/termination-log",)),
    "terminationMessagePolicy": OneOf(("File", "FallbackToLogsOnError")),
}
PROJECTION = {"name": LEAF, "items": KEY_TO_PATH, "optional": LEAF}
VOLUME = {
    "name": LEAF,
    "secret": {"secretName": LEAF, "items": KEY_TO_PATH, "defaultMode": LEAF, "optional": LEAF},
    "configMap": {"name": LEAF, "items": KEY_TO_PATH, "defaultMode": LEAF, "optional": LEAF},
    "projected": {"defaultMode": LEAF, "sources": ListOf({"secret": PROJECTION, "configMap": PROJECTION})},
    "emptyDir": {"medium": OneOf(("", "Memory")), "sizeLimit": LEAF},
    "persistentVolumeClaim": {"claimName": LEAF, "readOnly": LEAF},
}
TOPOLOGY_SPREAD = {
    "maxSkew": LEAF,
    "topologyKey": LEAF,
    "whenUnsatisfiable": OneOf(("DoNotSchedule", "ScheduleAnyway")),
    "labelSelector": SELECTOR,
    "matchLabelKeys": ListOf(LEAF),
    "minDomains": LEAF,
    "nodeAffinityPolicy": OneOf(("Honor", "Ignore")),
    "nodeTaintsPolicy": OneOf(("Honor", "Ignore")),
}
POD_SPEC = {
    "containers": ListOf(CONTAINER),
    "initContainers": ListOf(CONTAINER),
    "volumes": ListOf(VOLUME),
    "securityContext": POD_SECURITY,
    # No API server here: the account has nothing to talk to (its token is mounted by nobody).
    "serviceAccountName": LEAF,
    "automountServiceAccountToken": LEAF,
    "enableServiceLinks": LEAF,
    "terminationGracePeriodSeconds": LEAF,
    "restartPolicy": OneOf(("Always", "OnFailure", "Never")),
    "topologySpreadConstraints": ListOf(TOPOLOGY_SPREAD),
    "nodeSelector": FREE,
}
POD_TEMPLATE = {"metadata": METADATA, "spec": POD_SPEC}
HEAD = {"apiVersion": LEAF, "kind": LEAF, "metadata": METADATA}
PVC_TEMPLATE = {
    "metadata": METADATA,
    "spec": {
        "accessModes": ListOf(OneOf(("ReadWriteOnce", "ReadWriteOncePod"))),
        # A podman volume has no size (no quota on this filesystem): the request is not enforced.
        "resources": {"requests": {"storage": LEAF}},
    },
}
# Rollout fields: nothing to act on (pods are created and removed, never rolled out).
ROLLING = {"maxSurge": LEAF, "maxUnavailable": LEAF}
JOB_SPEC = {
    "backoffLimit": LEAF,
    "activeDeadlineSeconds": LEAF,
    # The runner removes a finished Job's pod at once, as the TTL controller would later.
    "ttlSecondsAfterFinished": LEAF,
    "completions": OneOf((1,)),
    "parallelism": OneOf((1,)),
    "template": POD_TEMPLATE,
}
SCHEMAS: dict[str, dict[str, Any]] = {
    "Deployment": {
        **HEAD,
        "spec": {
            "replicas": LEAF,
            "selector": SELECTOR,
            "template": POD_TEMPLATE,
            "strategy": {"type": OneOf(("RollingUpdate", "Recreate")), "rollingUpdate": ROLLING},
            "revisionHistoryLimit": LEAF,
            "progressDeadlineSeconds": LEAF,
            "minReadySeconds": LEAF,
        },
    },
    "StatefulSet": {
        **HEAD,
        "spec": {
            "replicas": LEAF,
            "serviceName": LEAF,
            "selector": SELECTOR,
            "template": POD_TEMPLATE,
            "podManagementPolicy": OneOf(("OrderedReady", "Parallel")),
            "updateStrategy": {"type": OneOf(("RollingUpdate", "OnDelete")), "rollingUpdate": ROLLING},
            "volumeClaimTemplates": ListOf(PVC_TEMPLATE),
            "persistentVolumeClaimRetentionPolicy": {
                "whenDeleted": OneOf(("Delete", "Retain")),
                "whenScaled": OneOf(("Delete", "Retain")),
            },
            "revisionHistoryLimit": LEAF,
            "minReadySeconds": LEAF,
        },
    },
    "Job": {**HEAD, "spec": JOB_SPEC},
    "CronJob": {
        **HEAD,
        "spec": {
            "schedule": LEAF,
            "timeZone": LEAF,
            "concurrencyPolicy": OneOf(("Allow", "Forbid", "Replace")),
            "startingDeadlineSeconds": LEAF,
            "successfulJobsHistoryLimit": LEAF,
            "failedJobsHistoryLimit": LEAF,
            "suspend": LEAF,
            "jobTemplate": {"metadata": METADATA, "spec": JOB_SPEC},
        },
    },
    "Service": {
        **HEAD,
        "spec": {
            "type": OneOf(("ClusterIP",)),
            "clusterIP": OneOf(("None",)),
            "selector": FREE,
            "publishNotReadyAddresses": LEAF,
            "ports": ListOf(
                {
                    "name": LEAF,
                    "port": LEAF,
                    "targetPort": LEAF,
                    "protocol": OneOf(("TCP", "UDP")),
                    "appProtocol": LEAF,
                }
            ),
        },
    },
    "ConfigMap": {**HEAD, "data": FREE},
    "Secret": {**HEAD, "type": OneOf(("Opaque",)), "data": FREE, "stringData": FREE},
}
#: Kinds with no pod: podman has nothing that enforces them, and the runner says so.
NOT_RUN = {
    "ServiceAccount": "no API server: nothing to authenticate to",
    "PodDisruptionBudget": "no eviction API: pods are removed by the test, one at a time",
    "HorizontalPodAutoscaler": "no metrics API: the test scales by hand",
    "NetworkPolicy": "podman's bridge does not enforce NetworkPolicies (tests/deploy checks them offline)",
    "Role": "no API server",
    "RoleBinding": "no API server",
    "ClusterRole": "no API server",
    "ClusterRoleBinding": "no API server",
    "Namespace": "one flat network: names resolve with and without the namespace",
}
#: Kinds whose fields are checked like the others', but whose pods the runner does not start.
CHECKED_NOT_RUN = {
    "CronJob": "a schedule the test does not wait for; the pods it would start are checked field by field",
}


def check(value: Any, schema: Any, path: str, errors: list[str]) -> None:
    """Append to `errors` the path of every key or value of `value` that `schema` does not allow."""
    if isinstance(schema, _Leaf):
        if isinstance(value, (dict, list)):
            errors.append(f"{path}: a {type(value).__name__} where a scalar was expected")
    elif isinstance(schema, _Free):
        if not isinstance(value, dict) or not all(isinstance(v, (str, int, float, bool)) for v in value.values()):
            errors.append(f"{path}: expected a map of scalars")
    elif isinstance(schema, OneOf):
        if value not in schema.values:
            errors.append(f"{path}: {value!r} is not handled (only {', '.join(map(repr, schema.values))})")
    elif isinstance(schema, ListOf):
        if not isinstance(value, list):
            errors.append(f"{path}: expected a list")
            return
        for i, item in enumerate(value):
            check(item, schema.item, f"{path}[{i}]", errors)
    elif isinstance(schema, dict):
        if not isinstance(value, dict):
            errors.append(f"{path}: expected an object")
            return
        for key, item in value.items():
            if key not in schema:
                errors.append(f"{path}.{key}: not handled by the podman runner")
            else:
                check(item, schema[key], f"{path}.{key}", errors)
    else:  # pragma: no cover - a schema bug
        raise TypeError(schema)


def check_objects(objects: Iterable[Mapping[str, Any]]) -> list[str]:
    """Every unsupported field of every object, as `Kind/name.path: why`."""
    errors: list[str] = []
    for obj in objects:
        kind = obj.get("kind", "?")
        name = f"{kind}/{obj.get('metadata', {}).get('name', '?')}"
        if kind in NOT_RUN:
            continue
        if kind not in SCHEMAS:
            errors.append(f"{name}: kind {kind} is not handled by the podman runner")
            continue
        check(obj, SCHEMAS[kind], name, errors)
    return errors


# --- quantities -------------------------------------------------------------------------
_SUFFIX = {
    "": 1,
    "m": 1e-3,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
}
_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(m|k|M|G|T|Ki|Mi|Gi|Ti)?$")


def quantity(value: str | int | float) -> float:
    """A Kubernetes quantity ("250m", "128Mi", "1") as a number (cores or bytes)."""
    if isinstance(value, (int, float)):
        return float(value)
    found = _QUANTITY.match(str(value))
    if not found:
        raise Unsupported(f"quantity {value!r} is not handled")
    return float(found.group(1)) * _SUFFIX[found.group(2) or ""]


# --- pods -------------------------------------------------------------------------------


@dataclass
class Workload:
    kind: str
    name: str
    namespace: str
    obj: dict[str, Any]

    @property
    def template(self) -> dict[str, Any]:
        return dict(self.obj["spec"]["template"])

    @property
    def spec(self) -> dict[str, Any]:
        return dict(self.template.get("spec", {}))

    @property
    def labels(self) -> dict[str, str]:
        return {k: str(v) for k, v in self.template.get("metadata", {}).get("labels", {}).items()}

    @property
    def annotations(self) -> dict[str, str]:
        return {k: str(v) for k, v in self.template.get("metadata", {}).get("annotations", {}).items()}


@dataclass
class Pod:
    name: str
    workload: Workload
    ip: str
    uid: str = field(default_factory=lambda: secrets.token_hex(16))
    ordinal: int | None = None
    containers: dict[str, str] = field(default_factory=dict)  # container name -> podman name
    ready: bool = False
    started: bool = False
    terminating: bool = False
    restarts: int = 0
    container_ready: dict[str, bool] = field(default_factory=dict)
    exit_codes: dict[str, int | None] = field(default_factory=dict)  # once deleted: how each container ended
    events: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)  # podman volumes that die with the pod
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _threads: list[threading.Thread] = field(default_factory=list, repr=False)

    @property
    def spec(self) -> dict[str, Any]:
        return self.workload.spec

    @property
    def hostname(self) -> str:
        return self.name


class Podman:
    """The podman command; `FakePodman` in the unit tests records instead."""

    def __init__(self, binary: str = "podman") -> None:
        self.binary = binary

    def __call__(self, *args: str, check: bool = True, timeout: float = 120) -> str:
        done = subprocess.run([self.binary, *args], capture_output=True, text=True, timeout=timeout, check=False)
        if check and done.returncode != 0:
            raise PodFailed(f"podman {' '.join(args[:3])} ... exited {done.returncode}: {done.stderr.strip()[-2000:]}")
        return done.stdout


def _flag(*keys: str, default: Any = None) -> Callable[[dict[str, Any], dict[str, Any]], Any]:
    def get(pod_sc: dict[str, Any], ctr_sc: dict[str, Any]) -> Any:
        for key in keys:
            if key in ctr_sc:
                return ctr_sc[key]
            if key in pod_sc:
                return pod_sc[key]
        return default

    return get


def _expand(text: str, env: Mapping[str, str]) -> str:
    """The kubelet's `$(VAR)` expansion: a defined variable is replaced, `$$` is a `$`, the rest stays."""
    out: list[str] = []
    i = 0
    while i < len(text):
        if text.startswith("$$", i):
            out.append("$")
            i += 2
        elif text.startswith("$(", i) and (end := text.find(")", i)) != -1 and text[i + 2 : end] in env:
            out.append(env[text[i + 2 : end]])
            i = end + 1
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


class Cluster:
    """The rendered objects, run with podman on a network of their own."""

    def __init__(
        self,
        objects: Iterable[Mapping[str, Any]],
        *,
        secrets: Mapping[str, Mapping[str, bytes]],
        state_dir: Path,
        run_id: str | None = None,
        external: Mapping[str, str] | None = None,
        node_labels: Mapping[str, str] | None = None,
        podman: Callable[..., str] | None = None,
        image_user: Callable[[str], str] | None = None,
        subnet: str | None = None,
    ) -> None:
        self.objects = [dict(o) for o in objects]
        errors = check_objects(self.objects)
        if errors:
            raise Unsupported("the podman runner cannot honour these rendered fields:\n  " + "\n  ".join(errors))
        self.run_id = run_id or secrets_token()
        self.state_dir = state_dir
        self.podman = podman or Podman()
        self._image_user = image_user or self._inspect_user
        self.node_labels = {**NODE_LABELS, **(node_labels or {})}
        #: Workloads the caller runs outside podman (name -> address the Services resolve to), with why.
        self.external = dict(external or {})
        self.network = f"meshop-test-{self.run_id}"
        self.subnet = ipaddress.ip_network(subnet) if subnet else None
        self._next_ip = 10
        self.pods: dict[str, Pod] = {}
        self._lock = threading.RLock()
        why = {**NOT_RUN, **CHECKED_NOT_RUN}
        self.not_run = {
            f"{o['kind']}/{o['metadata']['name']}": why[o["kind"]] for o in self.objects if o["kind"] in why
        }
        self.secrets: dict[str, dict[str, bytes]] = {k: dict(v) for k, v in secrets.items()}
        self.config_maps: dict[str, dict[str, bytes]] = {}
        for obj in self.objects:
            if obj["kind"] == "ConfigMap":
                self.config_maps[obj["metadata"]["name"]] = {k: str(v).encode() for k, v in obj.get("data", {}).items()}
            elif obj["kind"] == "Secret":
                import base64

                data = {k: base64.b64decode(v) for k, v in obj.get("data", {}).items()}
                data.update({k: str(v).encode() for k, v in obj.get("stringData", {}).items()})
                self.secrets.setdefault(obj["metadata"]["name"], data)
        self.workloads: dict[str, Workload] = {}
        for obj in self.objects:
            if obj["kind"] in ("Deployment", "StatefulSet", "Job"):
                meta = obj["metadata"]
                self.workloads[meta["name"]] = Workload(
                    obj["kind"], meta["name"], meta.get("namespace", "default"), obj
                )
        self.services = [o for o in self.objects if o["kind"] == "Service"]
        for name in self.external:
            if name not in self.workloads:
                raise Unsupported(f"external workload {name!r} is not in the rendered objects")

    # --- addresses ------------------------------------------------------------------------

    def gateway_ip(self) -> str:
        assert self.subnet is not None, "create_network() first"
        return str(next(self.subnet.hosts()))

    def _allocate_ip(self) -> str:
        assert self.subnet is not None, "create_network() first"
        with self._lock:
            ip = self.subnet.network_address + self._next_ip
            self._next_ip += 1
        if ip not in self.subnet or ip == self.subnet.broadcast_address:
            raise PodFailed(f"no address left in {self.subnet}")
        return str(ip)

    def create_network(self) -> None:
        """A bridge network of this run's own (a free /24 of 10.89.0.0/16), with no DNS."""
        if self.subnet is None:
            used = self._used_subnets()
            candidates = (ipaddress.ip_network(f"10.89.{n}.0/24") for n in range(100, 250))
            free = [net for net in candidates if not any(net.overlaps(u) for u in used)]
            self.subnet = random.choice(free)
        self.podman(
            "network", "create", "--disable-dns", "--subnet", str(self.subnet),
            "--label", f"{LABEL}={self.run_id}", self.network,
        )  # fmt: skip

    def _used_subnets(self) -> set[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        """The subnets of podman's networks and of the host's own addresses (another test's bridge)."""
        used = set()
        with contextlib.suppress(OSError, subprocess.SubprocessError, ValueError, KeyError):
            links = json.loads(subprocess.run(["ip", "-j", "-4", "addr"], capture_output=True, check=True).stdout)
            for link in links:
                for addr in link.get("addr_info", []):
                    used.add(ipaddress.ip_network(f"{addr['local']}/{addr['prefixlen']}", strict=False))
        for name in self.podman("network", "ls", "--format", "{{.Name}}").split():
            with contextlib.suppress(PodFailed, ValueError, KeyError, IndexError):
                info = json.loads(self.podman("network", "inspect", name))[0]
                used |= {ipaddress.ip_network(s["subnet"]) for s in info.get("subnets", [])}
        return used

    def _service_targets(self, exclude: Pod | None = None) -> dict[str, list[str]]:
        """Service name -> addresses of the pods it selects (running ones first; the external stand-ins')."""
        out: dict[str, list[str]] = {}
        for svc in self.services:
            selector = svc["spec"].get("selector") or {}
            ips: list[str] = []
            for name, workload in self.workloads.items():
                if not selector or not all(workload.labels.get(k) == str(v) for k, v in selector.items()):
                    continue
                if name in self.external:
                    ips.append(self.external[name])
                ips += [p.ip for p in self.running() if p.workload is workload and p is not exclude]
            out[svc["metadata"]["name"]] = ips
        return out

    def _dns_names(self, name: str, namespace: str) -> list[str]:
        return [name, f"{name}.{namespace}", f"{name}.{namespace}.svc", f"{name}.{namespace}.svc.cluster.local"]

    def hosts(self, pod: Pod) -> list[str]:
        """`--add-host` entries: every Service (to its first pod), and every StatefulSet pod by its DNS name."""
        entries: list[str] = []
        for svc_name, ips in self._service_targets().items():
            if ips:
                svc = next(s for s in self.services if s["metadata"]["name"] == svc_name)
                namespace = svc["metadata"].get("namespace", "default")
                entries += [f"{host}:{ips[0]}" for host in self._dns_names(svc_name, namespace)]
        for other in self.running():
            if other.workload.kind == "StatefulSet" and other is not pod:
                service = other.workload.obj["spec"].get("serviceName")
                if service:
                    entries += [
                        f"{host}:{other.ip}"
                        for host in self._dns_names(f"{other.name}.{service}", other.workload.namespace)
                    ]
        return entries

    def service_links(self, pod: Pod) -> dict[str, str]:
        """The docker-link style variables the kubelet sets for every Service with a cluster IP."""
        if pod.spec.get("enableServiceLinks", True) is False:
            return {}
        env: dict[str, str] = {}
        targets = self._service_targets()
        for svc in self.services:
            spec = svc["spec"]
            if spec.get("clusterIP") == "None" or not targets[svc["metadata"]["name"]]:
                continue
            if svc["metadata"].get("namespace", "default") != pod.workload.namespace:
                continue
            ip = targets[svc["metadata"]["name"]][0]
            prefix = svc["metadata"]["name"].upper().replace("-", "_")
            ports = spec.get("ports", [])
            if not ports:
                continue
            env[f"{prefix}_SERVICE_HOST"] = ip
            env[f"{prefix}_SERVICE_PORT"] = str(ports[0]["port"])
            for port in ports:
                proto = port.get("protocol", "TCP")
                if "name" in port:
                    env[f"{prefix}_SERVICE_PORT_{port['name'].upper().replace('-', '_')}"] = str(port["port"])
                base = f"{prefix}_PORT_{port['port']}_{proto}"
                env[base] = f"{proto.lower()}://{ip}:{port['port']}"
                env[f"{base}_PROTO"] = proto.lower()
                env[f"{base}_PORT"] = str(port["port"])
                env[f"{base}_ADDR"] = ip
            env[f"{prefix}_PORT"] = f"{ports[0].get('protocol', 'TCP').lower()}://{ip}:{ports[0]['port']}"
        return env

    # --- scheduling -----------------------------------------------------------------------

    def schedulable(self, workload: Workload) -> None:
        """Raise PodFailed when the one node cannot take this pod, as the scheduler would leave it Pending."""
        spec = workload.spec
        for key, value in (spec.get("nodeSelector") or {}).items():
            if self.node_labels.get(key) != str(value):
                raise PodFailed(f"{workload.name}: nodeSelector {key}={value} matches no node (Pending)")
        for constraint in spec.get("topologySpreadConstraints", []):
            if constraint["whenUnsatisfiable"] == "DoNotSchedule" and constraint["topologyKey"] not in self.node_labels:
                raise PodFailed(
                    f"{workload.name}: topology spread DoNotSchedule on {constraint['topologyKey']}, "
                    "a label the node lacks (Pending)"
                )

    def no_api_token(self, workload: Workload) -> None:
        """Refuse a pod that would get a Kubernetes API token (there is no API server to use it with):
        the pod's automountServiceAccountToken, else its ServiceAccount's, else true, as in Kubernetes."""
        spec = workload.spec
        automount = spec.get("automountServiceAccountToken")
        if automount is None:
            account = spec.get("serviceAccountName", "default")
            found = [o for o in self.objects if o["kind"] == "ServiceAccount" and o["metadata"]["name"] == account]
            automount = found[0].get("automountServiceAccountToken", True) if found else True
        if automount:
            raise Unsupported(f"{workload.name}: mounts a Kubernetes API token, and there is no API server here")

    # --- values ---------------------------------------------------------------------------

    def _secret(self, name: str, optional: bool, what: str) -> dict[str, bytes] | None:
        if name not in self.secrets:
            if optional:
                return None
            raise PodFailed(f"{what}: Secret {name!r} does not exist")
        return self.secrets[name]

    def _config_map(self, name: str, optional: bool, what: str) -> dict[str, bytes] | None:
        if name not in self.config_maps:
            if optional:
                return None
            raise PodFailed(f"{what}: ConfigMap {name!r} does not exist")
        return self.config_maps[name]

    def field_ref(self, pod: Pod, path: str) -> str:
        found = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
        if found:
            source = pod.workload.labels if found.group(1) == "labels" else pod.workload.annotations
            if found.group(2) not in source:
                return ""  # the kubelet gives an empty value for a missing label
            return source[found.group(2)]
        simple = {
            "metadata.name": pod.name,
            "metadata.namespace": pod.workload.namespace,
            "metadata.uid": pod.uid,
            "spec.nodeName": self.node_labels["kubernetes.io/hostname"],
            "spec.serviceAccountName": str(pod.spec.get("serviceAccountName", "default")),
            "status.podIP": pod.ip,
            "status.podIPs": pod.ip,
            "status.hostIP": self.gateway_ip(),
            "status.hostIPs": self.gateway_ip(),
        }
        if path not in simple:
            raise Unsupported(f"{pod.workload.name}: fieldRef {path} is not handled")
        return simple[path]

    def resource_ref(self, pod: Pod, container: dict[str, Any], ref: dict[str, Any]) -> str:
        target = container
        if ref.get("containerName"):
            target = next(c for c in pod.spec["containers"] if c["name"] == ref["containerName"])
        kind, _, resource = ref["resource"].partition(".")
        value = target.get("resources", {}).get(kind, {}).get(resource)
        if value is None:
            raise Unsupported(
                f"{pod.workload.name}: resourceFieldRef {ref['resource']} has no value (node allocatable)"
            )
        return str(math.ceil(quantity(value) / quantity(ref.get("divisor", "1"))))

    def environment(self, pod: Pod, container: dict[str, Any]) -> dict[str, str]:
        what = f"{pod.name}/{container['name']}"
        env = self.service_links(pod)
        for source in container.get("envFrom", []):
            prefix = source.get("prefix", "")
            if "secretRef" in source:
                ref = source["secretRef"]
                data = self._secret(ref["name"], ref.get("optional", False), what) or {}
            else:
                ref = source["configMapRef"]
                data = self._config_map(ref["name"], ref.get("optional", False), what) or {}
            env.update({prefix + k: v.decode() for k, v in data.items()})
        for var in container.get("env", []):
            name = var["name"]
            if "value" in var:
                env[name] = _expand(str(var["value"]), env)
                continue
            if "valueFrom" not in var:
                env[name] = ""
                continue
            source = var["valueFrom"]
            if "secretKeyRef" in source or "configMapKeyRef" in source:
                secret = "secretKeyRef" in source
                ref = source["secretKeyRef" if secret else "configMapKeyRef"]
                getter = self._secret if secret else self._config_map
                data = getter(ref["name"], ref.get("optional", False), what)
                if data is None:
                    continue
                if ref["key"] not in data:
                    if ref.get("optional", False):
                        continue
                    raise PodFailed(f"{what}: key {ref['key']!r} is not in {ref['name']!r} (env {name})")
                env[name] = data[ref["key"]].decode()
            elif "fieldRef" in source:
                env[name] = self.field_ref(pod, source["fieldRef"]["fieldPath"])
            else:
                env[name] = self.resource_ref(pod, container, source["resourceFieldRef"])
        return env

    # --- volumes --------------------------------------------------------------------------

    def _files(self, pod: Pod, volume: dict[str, Any]) -> dict[str, tuple[bytes, int]]:
        """A Secret, ConfigMap or projected volume's files: relative path -> (content, mode)."""
        what = f"{pod.name} volume {volume['name']}"
        if "projected" in volume:
            default = volume["projected"].get("defaultMode", 0o644)
            sources = [
                (next(iter(s)), s[next(iter(s))], s[next(iter(s))]["name"]) for s in volume["projected"]["sources"]
            ]
        else:
            kind = "secret" if "secret" in volume else "configMap"
            ref = volume[kind]
            default = ref.get("defaultMode", 0o644)
            sources = [(kind, ref, ref["secretName"] if kind == "secret" else ref["name"])]
        files: dict[str, tuple[bytes, int]] = {}
        for kind, ref, name in sources:
            getter = self._secret if kind == "secret" else self._config_map
            data = getter(name, ref.get("optional", False), what)
            if data is None:
                continue
            if "items" in ref:
                for item in ref["items"]:
                    if item["key"] not in data:
                        if ref.get("optional", False):
                            continue
                        raise PodFailed(f"{what}: key {item['key']!r} is not in {name!r}")
                    files[item["path"]] = (data[item["key"]], item.get("mode", default))
            else:
                files.update({key: (value, default) for key, value in data.items()})
        return files

    def write_volume(self, pod: Pod, volume: dict[str, Any], fs_group: int | None) -> Path:
        root = self.state_dir / pod.name / "volumes" / volume["name"]
        root.mkdir(parents=True, exist_ok=False)
        os.chmod(root, 0o755)
        for rel, (content, mode) in self._files(pod, volume).items():
            if rel.startswith("/") or ".." in Path(rel).parts:
                raise PodFailed(f"{pod.name} volume {volume['name']}: path {rel!r} leaves the volume")
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            os.chmod(path.parent, 0o755)
            path.write_bytes(content)
            if fs_group is not None:  # the kubelet: group fsGroup, and the group may read
                os.chown(path, 0, fs_group)
                mode |= 0o440
            os.chmod(path, mode)
        return root

    # --- the podman command lines ---------------------------------------------------------

    def _inspect_user(self, image: str) -> str:
        return json.loads(self.podman("image", "inspect", image))[0].get("Config", {}).get("User", "")

    def user_flags(self, pod: Pod, container: dict[str, Any]) -> list[str]:
        pod_sc, ctr_sc = pod.spec.get("securityContext", {}), container.get("securityContext", {})
        uid, gid = _flag("runAsUser")(pod_sc, ctr_sc), _flag("runAsGroup")(pod_sc, ctr_sc)
        what = f"{pod.name}/{container['name']}"
        if uid is None:
            image_user = self._image_user(container["image"])
            name, _, group = image_user.partition(":")
            if _flag("runAsNonRoot", default=False)(pod_sc, ctr_sc) and not name.isdigit():
                raise PodFailed(f"{what}: runAsNonRoot and the image's user {image_user!r} is not numeric")
            uid = int(name) if name.isdigit() else None
            if gid is None and group.isdigit():
                gid = int(group)
        if _flag("runAsNonRoot", default=False)(pod_sc, ctr_sc) and (uid is None or int(uid) == 0):
            raise PodFailed(f"{what}: runAsNonRoot and the container would run as root")
        flags: list[str] = []
        if uid is not None:  # no group: the image's passwd entry's, as with the kubelet
            flags += ["--user", f"{uid}:{gid}" if gid is not None else str(uid)]
        groups = [*pod_sc.get("supplementalGroups", [])]
        if "fsGroup" in pod_sc:
            groups.append(pod_sc["fsGroup"])
        flags += [f"--group-add={g}" for g in dict.fromkeys(groups)]
        return flags

    def security_flags(self, pod: Pod, container: dict[str, Any]) -> list[str]:
        ctr_sc = container.get("securityContext", {})
        flags: list[str] = []
        if ctr_sc.get("readOnlyRootFilesystem"):
            flags += ["--read-only", "--read-only-tmpfs=false"]
        caps = ctr_sc.get("capabilities", {})
        flags += [f"--cap-drop={c.lower()}" for c in caps.get("drop", [])]
        flags += [f"--cap-add={c.lower()}" for c in caps.get("add", [])]
        if ctr_sc.get("allowPrivilegeEscalation") is False:
            flags += ["--security-opt=no-new-privileges"]
        # seccompProfile RuntimeDefault (the only value the schema allows) is podman's default profile.
        return flags

    def resource_flags(self, container: dict[str, Any]) -> list[str]:
        resources = container.get("resources", {})
        limits, requests = resources.get("limits", {}), resources.get("requests", {})
        flags: list[str] = []
        if "memory" in limits:
            flags.append(f"--memory={int(quantity(limits['memory']))}")
        if "cpu" in limits:
            flags.append(f"--cpus={quantity(limits['cpu']):g}")
        if "memory" in requests:
            flags.append(f"--memory-reservation={int(quantity(requests['memory']))}")
        if "cpu" in requests:
            flags.append(f"--cpu-shares={max(2, int(quantity(requests['cpu']) * 1024))}")
        return flags

    def mount_flags(self, pod: Pod, container: dict[str, Any], volumes: dict[str, tuple[str, str]]) -> list[str]:
        """`volumes`: name -> ("dir", host path) for files, ("volume", podman volume name) for the rest."""
        flags: list[str] = []
        for mount in container.get("volumeMounts", []):
            if mount["name"] not in volumes:
                raise PodFailed(f"{pod.name}/{container['name']}: no volume {mount['name']!r}")
            kind, source = volumes[mount["name"]]
            sub = mount.get("subPath", "")
            if sub and (sub.startswith("/") or ".." in Path(sub).parts):
                raise PodFailed(f"{pod.name}/{container['name']}: subPath {sub!r} leaves the volume")
            options = ["ro"] if kind == "dir" or mount.get("readOnly") else ["rw"]
            if kind == "dir":
                host = f"{source}/{sub}" if sub else source
                flags += ["--volume", f"{host}:{mount['mountPath']}:{','.join(options)}"]
            else:
                spec = f"type=volume,source={source},destination={mount['mountPath']}"
                if sub:
                    spec += f",subpath={sub}"
                if "ro" in options:
                    spec += ",ro=true"
                flags += ["--mount", spec]
        return flags

    def container_argv(
        self,
        pod: Pod,
        container: dict[str, Any],
        *,
        env_file: Path,
        volumes: dict[str, tuple[str, str]],
        env: Mapping[str, str],
        init: bool = False,
    ) -> list[str]:
        spec = pod.spec
        restart = spec.get("restartPolicy", "Always")
        argv = [
            "--pod", pod.name,
            "--name", pod.containers[container["name"]],
            "--label", f"{LABEL}={self.run_id}",
            "--pull=never",
            "--env-file", str(env_file),
            "--stop-timeout", str(int(spec.get("terminationGracePeriodSeconds", 30))),
        ]  # fmt: skip
        if init or pod.workload.kind == "Job":
            argv.append("--restart=no")  # an init container runs once; a Job's are retried by run_job
        else:
            argv.append(
                {"Always": "--restart=always", "OnFailure": "--restart=on-failure", "Never": "--restart=no"}[restart]
            )
        argv += self.user_flags(pod, container)
        argv += self.security_flags(pod, container)
        argv += self.resource_flags(container)
        argv += self.mount_flags(pod, container, volumes)
        if "workingDir" in container:
            argv += ["--workdir", container["workingDir"]]
        if "command" in container:
            argv += ["--entrypoint", json.dumps([_expand(str(a), env) for a in container["command"]])]
        argv.append(container["image"])
        if "args" in container:
            argv += [_expand(str(a), env) for a in container["args"]]
        elif "command" in container:
            pass  # the kubelet: a command without args drops the image's CMD (podman's --entrypoint does too)
        return argv

    def pod_argv(self, pod: Pod) -> list[str]:
        argv = [
            "pod", "create",
            "--name", pod.name,
            "--network", self.network,
            "--ip", pod.ip,
            "--hostname", pod.hostname,
            "--label", f"{LABEL}={self.run_id}",
        ]  # fmt: skip
        for entry in self.hosts(pod):
            argv += ["--add-host", entry]
        return argv

    # --- running --------------------------------------------------------------------------

    def _new_pod(self, workload: Workload, ordinal: int | None = None) -> Pod:
        # A StatefulSet's pods by ordinal; a Deployment's with a random suffix, as the ReplicaSet names them.
        name = f"{workload.name}-{ordinal}" if ordinal is not None else f"{workload.name}-{secrets.token_hex(3)}"
        pod = Pod(name=name, workload=workload, ip=self._allocate_ip(), ordinal=ordinal)
        for container in [*workload.spec.get("initContainers", []), *workload.spec["containers"]]:
            pod.containers[container["name"]] = f"{name}-{container['name']}"
        return pod

    def _volumes(self, pod: Pod) -> dict[str, tuple[str, str]]:
        fs_group = pod.spec.get("securityContext", {}).get("fsGroup")
        out: dict[str, tuple[str, str]] = {}
        for volume in pod.spec.get("volumes", []):
            if any(k in volume for k in ("secret", "configMap", "projected")):
                out[volume["name"]] = ("dir", str(self.write_volume(pod, volume, fs_group)))
            elif "emptyDir" in volume:
                name = f"{pod.name}-{volume['name']}"
                options = ["mode=2777" if fs_group is not None else "mode=777"]
                if fs_group is not None:
                    options.append(f"gid={fs_group}")
                if "sizeLimit" in volume["emptyDir"]:  # in pages: podman takes `size=` for a quota it has not
                    pages = math.ceil(quantity(volume["emptyDir"]["sizeLimit"]) / os.sysconf("SC_PAGE_SIZE"))
                    options.append(f"nr_blocks={pages}")
                self.podman(
                    "volume", "create", "--label", f"{LABEL}={self.run_id}",
                    "--opt", "type=tmpfs", "--opt", "device=tmpfs", "--opt", "o=" + ",".join(options), name,
                )  # fmt: skip
                pod.volumes.append(name)
                out[volume["name"]] = ("volume", name)
            else:
                claim = volume["persistentVolumeClaim"]["claimName"]
                out[volume["name"]] = ("volume", self._claim(claim, fs_group))
        for template in pod.workload.obj["spec"].get("volumeClaimTemplates", []):
            claim = f"{template['metadata']['name']}-{pod.name}"
            out[template["metadata"]["name"]] = ("volume", self._claim(claim, fs_group))
        return out

    def _claim(self, name: str, fs_group: int | None) -> str:
        volume = f"{self.run_id}-{name}"
        if not self._volume_exists(volume):
            self.podman("volume", "create", "--label", f"{LABEL}={self.run_id}", volume)
            if fs_group is not None:  # the kubelet: group fsGroup, setgid, group-writable
                path = self.podman("volume", "inspect", "--format", "{{.Mountpoint}}", volume).strip()
                os.chown(path, 0, fs_group)
                os.chmod(path, 0o2775)
        return volume

    def _volume_exists(self, volume: str) -> bool:
        return volume in self.podman("volume", "ls", "--format", "{{.Name}}").split()

    def _write_env(self, pod: Pod, container: dict[str, Any], env: Mapping[str, str]) -> Path:
        path = self.state_dir / pod.name / f"{container['name']}.env"
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = []
        for key, value in env.items():
            if "\n" in value:
                raise Unsupported(f"{pod.name}/{container['name']}: env {key} holds a newline (podman's env file)")
            lines.append(f"{key}={value}\n")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.writelines(lines)
        return path

    def start_pod(self, workload: Workload, ordinal: int | None = None) -> Pod:
        """Create one pod of `workload`, run its init containers, start its containers and their probes."""
        if workload.name in self.external:
            raise PodFailed(f"{workload.name} is run outside podman ({self.external[workload.name]})")
        self.schedulable(workload)
        self.no_api_token(workload)
        pod = self._new_pod(workload, ordinal)
        with self._lock:
            self.pods[pod.name] = pod
        self.podman(*self.pod_argv(pod))
        volumes = self._volumes(pod)
        self.podman("pod", "start", pod.name)
        for container in workload.spec.get("initContainers", []):
            env = self.environment(pod, container)
            argv = self.container_argv(
                pod, container, env_file=self._write_env(pod, container, env), volumes=volumes, env=env, init=True
            )
            self.podman("run", *argv, timeout=600)  # attached: returns when it exits, fails when it fails
        for container in workload.spec["containers"]:
            env = self.environment(pod, container)
            argv = self.container_argv(
                pod, container, env_file=self._write_env(pod, container, env), volumes=volumes, env=env
            )
            self.podman("run", "--detach", *argv)
        if workload.kind != "Job":
            for container in workload.spec["containers"]:
                thread = threading.Thread(
                    target=self._probe_loop, args=(pod, container), name=f"probe-{pod.name}", daemon=True
                )
                pod._threads.append(thread)
                thread.start()
        return pod

    def start(self, name: str, replicas: int | None = None) -> list[Pod]:
        """Start `replicas` (default: the object's) pods of Deployment or StatefulSet `name`."""
        workload = self.workloads[name]
        count = replicas if replicas is not None else int(workload.obj["spec"].get("replicas", 1))
        pods = []
        ordered = workload.kind == "StatefulSet" and workload.obj["spec"].get("podManagementPolicy") != "Parallel"
        for index in range(count):
            pod = self.start_pod(workload, index if workload.kind == "StatefulSet" else None)
            pods.append(pod)
            if ordered:  # OrderedReady: the next pod only once this one is ready
                self.wait_ready([pod], timeout=120)
        return pods

    def scale(self, name: str, replicas: int) -> list[Pod]:
        """Add pods to `name` until it has `replicas` (removing pods: `delete_pod`)."""
        workload = self.workloads[name]
        have = [p for p in self.running() if p.workload is workload]
        added = []
        for _ in range(replicas - len(have)):
            ordinal = len(have) + len(added) if workload.kind == "StatefulSet" else None
            added.append(self.start_pod(workload, ordinal))
        return added

    def pods_of(self, name: str) -> list[Pod]:
        return [p for p in self.running() if p.workload.name == name]

    def running(self) -> list[Pod]:
        """The pods not deleted (nor being deleted), oldest first."""
        with self._lock:
            return [p for p in self.pods.values() if not p.terminating]

    def wait_ready(self, pods: Iterable[Pod], timeout: float) -> None:
        pods = list(pods)
        deadline = time.monotonic() + timeout
        while not all(p.ready for p in pods):
            if time.monotonic() > deadline:
                late = [p.name for p in pods if not p.ready]
                raise PodFailed(f"not ready after {timeout:.0f}s: {', '.join(late)}\n" + self.describe(late))
            time.sleep(0.2)
        minimum = max(int(p.workload.obj["spec"].get("minReadySeconds", 0)) for p in pods) if pods else 0
        time.sleep(minimum)  # available only after minReadySeconds ready

    def run_job(self, name: str) -> None:
        """Run Job `name` to completion, within activeDeadlineSeconds and backoffLimit retries: a new pod per
        failed attempt (restartPolicy Never) or the same container again (OnFailure). The runner retries, so
        a Job's containers run with podman's `--restart=no`."""
        workload = self.workloads[name]
        spec = workload.obj["spec"]
        deadline = time.monotonic() + float(spec.get("activeDeadlineSeconds", 600))
        attempts = int(spec.get("backoffLimit", 6)) + 1
        on_failure = workload.spec.get("restartPolicy") == "OnFailure"
        failures: list[str] = []
        pod: Pod | None = None
        try:
            for attempt in range(attempts):
                if pod is None or not on_failure:
                    pod = self.start_pod(workload)
                else:
                    for container in workload.spec["containers"]:
                        self.podman("start", pod.containers[container["name"]])
                codes = []
                for container in workload.spec["containers"]:
                    left = deadline - time.monotonic()
                    try:
                        out = self.podman("wait", pod.containers[container["name"]], timeout=max(1.0, left))
                    except subprocess.TimeoutExpired:
                        raise PodFailed(f"Job {name}: past activeDeadlineSeconds\n{self.logs(pod)}") from None
                    codes.append(int(out.strip() or "1"))
                if not any(codes):
                    return
                failures.append(f"attempt {attempt + 1}: exit codes {codes}\n{self.logs(pod)}")
                if not on_failure:
                    self.delete_pod(pod)
                    pod = None
            raise PodFailed(f"Job {name} failed (backoffLimit {attempts - 1}):\n" + "\n".join(failures))
        finally:
            if pod is not None:
                self.delete_pod(pod)

    # --- probes ---------------------------------------------------------------------------

    def _port(self, pod: Pod, container: dict[str, Any], port: int | str) -> int:
        if isinstance(port, int) or str(port).isdigit():
            return int(port)
        for ctr in pod.spec["containers"]:
            for p in ctr.get("ports", []):
                if p.get("name") == port:
                    return int(p["containerPort"])
        raise PodFailed(f"{pod.name}/{container['name']}: no port named {port!r}")

    def probe(self, pod: Pod, container: dict[str, Any], probe: dict[str, Any]) -> bool:
        """One probe attempt, as the kubelet makes it: an HTTP status 200-399, a TCP connect, an exit 0."""
        timeout = float(probe.get("timeoutSeconds", 1))
        try:
            if "httpGet" in probe:
                get = probe["httpGet"]
                conn = http.client.HTTPConnection(pod.ip, self._port(pod, container, get["port"]), timeout=timeout)
                try:
                    headers = {h["name"]: h["value"] for h in get.get("httpHeaders", [])}
                    headers.setdefault("User-Agent", "kube-probe/podman-runner")
                    conn.request("GET", get.get("path", "/"), headers=headers)
                    return 200 <= conn.getresponse().status < 400
                finally:
                    conn.close()
            if "tcpSocket" in probe:
                port = self._port(pod, container, probe["tcpSocket"]["port"])
                with socket.create_connection((pod.ip, port), timeout=timeout):
                    return True
            done = subprocess.run(
                ["podman", "exec", pod.containers[container["name"]], *probe["exec"]["command"]],
                capture_output=True,
                timeout=timeout + 5,
                check=False,
            )
            return done.returncode == 0
        except (OSError, http.client.HTTPException, subprocess.TimeoutExpired):
            return False

    def _probe_loop(self, pod: Pod, container: dict[str, Any]) -> None:
        """The kubelet's probe worker for one container: startup first, then readiness and liveness, each on
        its period from the container's start (initialDelaySeconds); a failed startup or liveness probe
        restarts the container (not while the pod terminates)."""
        name = container["name"]
        probes = {k: container[k] for k in ("startupProbe", "readinessProbe", "livenessProbe") if k in container}
        while not pod._stop.is_set():
            began = time.monotonic()
            due = {k: began + float(p.get("initialDelaySeconds", 0)) for k, p in probes.items()}
            passes = dict.fromkeys(probes, 0)
            fails = dict.fromkeys(probes, 0)
            started = "startupProbe" not in probes
            ready = "readinessProbe" not in probes
            restart_for = ""
            while not pod._stop.is_set() and not restart_for:
                now = time.monotonic()
                for kind in ("startupProbe",) if not started else ("readinessProbe", "livenessProbe"):
                    if kind not in probes or now < due[kind]:
                        continue
                    probe = probes[kind]
                    due[kind] = now + float(probe.get("periodSeconds", 10))
                    if self.probe(pod, container, probe):
                        passes[kind], fails[kind] = passes[kind] + 1, 0
                    else:
                        passes[kind], fails[kind] = 0, fails[kind] + 1
                    success = passes[kind] >= int(probe.get("successThreshold", 1))
                    failure = fails[kind] >= int(probe.get("failureThreshold", 3))
                    if kind == "startupProbe":
                        started = success
                    elif kind == "readinessProbe":
                        ready = True if success else False if failure else ready
                    if failure and kind != "readinessProbe" and not pod.terminating:
                        restart_for = f"{kind} failed {fails[kind]} times"
                with self._lock:
                    pod.container_ready[name] = started and ready and not restart_for
                    pod.started = started
                    pod.ready = not pod.terminating and all(
                        pod.container_ready.get(c["name"], False) for c in pod.spec["containers"]
                    )
                pod._stop.wait(0.1)
            if restart_for:
                self._restart(pod, name, restart_for)

    def restarts(self, pod: Pod) -> int:
        """How often the pod's containers restarted: after a failed probe (the runner) or an exit (podman)."""
        count = pod.restarts
        for name in pod.spec["containers"]:
            out = self.podman(
                "inspect", "--type", "container", "--format", "{{.RestartCount}}", pod.containers[name["name"]]
            )
            count += int(out.strip() or 0)
        return count

    def _restart(self, pod: Pod, container: str, why: str) -> None:
        pod.restarts += 1
        pod.events.append(f"{container}: {why}; restarted")
        grace = int(pod.spec.get("terminationGracePeriodSeconds", 30))
        self.podman("restart", "--time", str(grace), pod.containers[container], check=False, timeout=grace + 30)

    # --- stopping -------------------------------------------------------------------------

    def pre_stop(self, pod: Pod, container: dict[str, Any]) -> None:
        handler = container.get("lifecycle", {}).get("preStop")
        if not handler:
            return
        if "sleep" in handler:
            time.sleep(float(handler["sleep"]["seconds"]))
        elif "exec" in handler:
            self.podman(
                "exec", pod.containers[container["name"]], *handler["exec"]["command"], check=False, timeout=600
            )
        else:
            self.probe(pod, container, {"httpGet": handler["httpGet"], "timeoutSeconds": 30})

    def delete_pod(self, pod: Pod) -> float:
        """What the kubelet does to a deleted pod: not ready at once, preStop hooks, SIGTERM, and SIGKILL
        after what is left of terminationGracePeriodSeconds. Returns the seconds it took."""
        started = time.monotonic()
        pod.terminating = True
        pod.ready = False
        grace = float(pod.spec.get("terminationGracePeriodSeconds", 30))
        deadline = started + grace
        running = [c for c in pod.spec["containers"] if self._running(pod.containers[c["name"]])]
        hooks = [threading.Thread(target=self.pre_stop, args=(pod, c), daemon=True) for c in running]
        for hook in hooks:
            hook.start()
        for hook in hooks:
            hook.join(timeout=max(0.0, deadline - time.monotonic()))
        left = max(2, math.ceil(deadline - time.monotonic()))  # the kubelet gives 2 s more past a long hook
        stoppers = [
            threading.Thread(
                target=self.podman, args=("stop", "--time", str(left), pod.containers[c["name"]]),
                kwargs={"check": False, "timeout": left + 30}, daemon=True,
            )
            for c in running
        ]  # fmt: skip
        for stopper in stoppers:
            stopper.start()
        for stopper in stoppers:
            stopper.join()
        for c in running:  # 137: SIGKILLed at the end of the grace period
            code = self.podman(
                "inspect",
                "--type",
                "container",
                "--format",
                "{{.State.ExitCode}}",
                pod.containers[c["name"]],
                check=False,
            ).strip()
            pod.exit_codes[c["name"]] = int(code) if code.lstrip("-").isdigit() else None
        pod._stop.set()
        for thread in pod._threads:
            thread.join(timeout=5)
        self.podman("pod", "rm", "--force", pod.name, check=False)
        for volume in pod.volumes:
            self.podman("volume", "rm", "--force", volume, check=False)
        shutil.rmtree(self.state_dir / pod.name, ignore_errors=True)
        with self._lock:
            self.pods.pop(pod.name, None)
        return time.monotonic() - started

    def _running(self, container: str) -> bool:
        out = self.podman("inspect", "--type", "container", "--format", "{{.State.Status}}", container, check=False)
        return out.strip() == "running"

    def delete(self, names: Iterable[str]) -> None:
        """Delete every pod of these workloads at once (as `kubectl delete` does), and wait for them."""
        names = set(names)
        with self._lock:
            pods = [p for p in self.pods.values() if p.workload.name in names]
        threads = [threading.Thread(target=self.delete_pod, args=(p,), daemon=True) for p in pods]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def start_all(self, names: Iterable[str]) -> list[Pod]:
        """Start these workloads' pods at once (as `kubectl apply` does)."""
        results: dict[str, list[Pod]] = {}
        errors: list[BaseException] = []

        def start(name: str) -> None:
            try:
                results[name] = self.start(name)
            except BaseException as exc:  # raised below, in the caller's thread
                errors.append(exc)

        threads = [threading.Thread(target=start, args=(n,), daemon=True) for n in names]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]
        return [pod for pods in results.values() for pod in pods]

    def down(self, stages: Iterable[Iterable[str]] = ()) -> list[float]:
        """Delete every pod, stage by stage (each stage's workloads at once; the workloads no stage names
        first), then whatever else carries this run's label: containers, volumes, the network.
        Returns the seconds each stage took, the unnamed workloads' first."""
        stages = [list(s) for s in stages]
        named = {n for s in stages for n in s}
        took = []
        for stage in [[w for w in self.workloads if w not in named], *stages]:
            began = time.monotonic()
            self.delete(stage)
            took.append(round(time.monotonic() - began, 1))
        selector = f"label={LABEL}={self.run_id}"
        for ls, rm in (
            (("pod", "ps", "-q"), ("pod", "rm", "--force")),
            (("ps", "-a", "-q"), ("rm", "--force")),
            (("volume", "ls", "-q"), ("volume", "rm", "--force")),
        ):
            for ident in self.podman(*ls, "--filter", selector, check=False).split():
                self.podman(*rm, ident, check=False)
        self.podman("network", "rm", "--force", self.network, check=False)
        shutil.rmtree(self.state_dir, ignore_errors=True)
        return took

    def leftovers(self) -> list[str]:
        """Whatever still carries this run's label: pods, containers, volumes, networks."""
        found: list[str] = []
        selector = f"label={LABEL}={self.run_id}"
        for kind, args in (
            ("pod", ("pod", "ps", "--format", "{{.Name}}")),
            ("container", ("ps", "-a", "--format", "{{.Names}}")),
            ("volume", ("volume", "ls", "--format", "{{.Name}}")),
            ("network", ("network", "ls", "--format", "{{.Name}}")),
        ):
            found += [f"{kind} {n}" for n in self.podman(*args, "--filter", selector).split()]
        return found

    # --- diagnostics ----------------------------------------------------------------------

    def logs(self, pod: Pod, tail: int = 40) -> str:
        out = []
        for container, podman_name in pod.containers.items():
            text = subprocess.run(
                ["podman", "logs", "--tail", str(tail), podman_name], capture_output=True, text=True, check=False
            )
            out.append(f"--- {pod.name}/{container}\n{text.stdout}{text.stderr}")
        return "\n".join(out)

    def describe(self, names: Iterable[str]) -> str:
        return "\n".join(
            f"{p.name} ({p.ip}) started={p.started} restarts={p.restarts} events={p.events}\n{self.logs(p)}"
            for n in names
            if (p := self.pods.get(n))
        )


def secrets_token() -> str:
    return secrets.token_hex(4)
