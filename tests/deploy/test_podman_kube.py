"""tests/system/podman_kube.py without podman: which fields it refuses, and the podman command lines,
files and host entries it makes of the ones it accepts (the system test runs them for real)."""

from __future__ import annotations

import copy
import http.server
import json
import os
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.system.podman_kube import (
    Cluster,
    PodFailed,
    Unsupported,
    check_objects,
    quantity,
)

ROOT = Path(__file__).parents[2]
OVERLAYS = ROOT / "deploy" / "k8s" / "overlays"


def deployment(name: str = "catalog", **pod: Any) -> dict[str, Any]:
    """A Deployment shaped as the manifests' meshop processes are."""
    spec: dict[str, Any] = {
        "terminationGracePeriodSeconds": 25,
        "enableServiceLinks": False,
        "automountServiceAccountToken": False,
        "serviceAccountName": name,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 1000,
            "runAsGroup": 1000,
            "fsGroup": 1000,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "topologySpreadConstraints": [
            {
                "maxSkew": 1,
                "topologyKey": "topology.kubernetes.io/zone",
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": {"app.kubernetes.io/part-of": "meshop"}},
                "matchLabelKeys": ["pod-template-hash"],
            }
        ],
        "containers": [
            {
                "name": "meshop",
                "image": "localhost/meshop:dev",
                "args": ["run", "$(SERVICE)"],
                "ports": [{"name": "http", "containerPort": 8080}],
                "env": [
                    {"name": "SERVICE", "value": name},
                    {"name": "MESHOP_ADVERTISE_HOST", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                    {"name": "MESHOP_INSTANCE_ID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {
                        "name": "MESHOP_ZONE",
                        "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['topology.kubernetes.io/zone']"}},
                    },
                    {"name": "URL", "valueFrom": {"secretKeyRef": {"name": "meshop-database", "key": "url"}}},
                    {"name": "WHERE", "value": "$(URL)/x $$(URL) $(NOPE)"},
                    {"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
                ],
                "resources": {
                    "requests": {"cpu": "100m", "memory": "96Mi"},
                    "limits": {"cpu": "1", "memory": "160Mi"},
                },
                "startupProbe": {"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": 5},
                "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}, "periodSeconds": 5},
                "livenessProbe": {"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": 5},
                "lifecycle": {"preStop": {"sleep": {"seconds": 5}}},
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "readOnlyRootFilesystem": True,
                    "capabilities": {"drop": ["ALL"]},
                },
                "volumeMounts": [
                    {"name": "tmp", "mountPath": "/tmp"},
                    {"name": "identity", "mountPath": "/etc/meshop/identity", "readOnly": True},
                    {"name": "claim", "mountPath": "/var/lib/x"},
                ],
            }
        ],
        "volumes": [
            {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}},
            {
                "name": "identity",
                "secret": {
                    "secretName": "meshop-identity",
                    "defaultMode": 0o440,
                    "items": [
                        {"key": "trust.json", "path": "trust.json"},
                        {"key": f"{name}.json", "path": f"services/{name}.json", "mode": 0o400},
                    ],
                },
            },
            {"name": "claim", "persistentVolumeClaim": {"claimName": "shared"}},
        ],
        **pod,
    }
    labels = {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": "meshop"}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app.kubernetes.io/name": name}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {"metadata": {"labels": labels}, "spec": spec},
        },
    }


def service(name: str, selector: dict[str, str], port: int = 8080, headless: bool = False) -> dict[str, Any]:
    spec: dict[str, Any] = {"selector": selector, "ports": [{"name": "p", "port": port, "targetPort": port}]}
    if headless:
        spec["clusterIP"] = "None"
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": spec}


def statefulset() -> dict[str, Any]:
    nats = deployment("nats")
    nats["kind"] = "StatefulSet"
    nats["spec"].pop("strategy")
    nats["spec"]["serviceName"] = "nats-headless"
    nats["spec"]["podManagementPolicy"] = "Parallel"
    nats["spec"]["volumeClaimTemplates"] = [
        {
            "metadata": {"name": "data"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "5Gi"}}},
        }
    ]
    return nats


SECRETS = {
    "meshop-database": {"url": b"postgresql://u:p@postgres:5432"},
    "meshop-identity": {
        "trust.json": b"{}",
        **{f"{p}.json": b"{1}" for p in ("catalog", "nats", "postgres", "migrate")},
    },
}


class FakePodman:
    """Records every podman command; answers the few the runner reads."""

    def __init__(self, tmp: Path) -> None:
        self.calls: list[tuple[str, ...]] = []
        self.times: list[float] = []
        self.tmp = tmp
        self.wait_codes: list[int] = []
        self.volumes: set[str] = set()

    def __call__(self, *args: str, check: bool = True, timeout: float = 120) -> str:
        self.calls.append(args)
        self.times.append(time.monotonic())
        if args[:2] == ("volume", "ls"):
            return "\n".join(self.volumes)
        if args[:2] == ("volume", "create"):
            self.volumes.add(args[-1])
        if args[:3] == ("volume", "inspect", "--format"):
            path = self.tmp / "volumes" / args[-1]
            path.mkdir(parents=True, exist_ok=True)
            return str(path)
        if args[:1] == ("wait",):
            return f"{self.wait_codes.pop(0)}\n"
        if args[:1] == ("inspect",):
            return "running\n" if "{{.State.Status}}" in args else "1\n" if "{{.RestartCount}}" in args else "0\n"
        if args[:2] == ("network", "ls") or args[:2] == ("pod", "ps") or args[:2] == ("ps", "-a"):
            return ""
        return ""

    def named(self, *head: str) -> list[tuple[str, ...]]:
        return [c for c in self.calls if c[: len(head)] == head]


@pytest.fixture
def podman(tmp_path: Path) -> FakePodman:
    return FakePodman(tmp_path)


def cluster(objects: list[dict[str, Any]], podman: FakePodman, tmp_path: Path, **kwargs: Any) -> Cluster:
    user = kwargs.pop("image_user", "1000:1000")
    return Cluster(
        objects,
        secrets=kwargs.pop("secrets", SECRETS),
        state_dir=tmp_path / "state",
        run_id="t1",
        podman=podman,
        image_user=lambda image: user,
        subnet="10.89.200.0/24",
        **kwargs,
    )


# --- the allow-list -----------------------------------------------------------------------


def test_the_manifests_shape_is_accepted_and_every_unknown_field_is_named() -> None:
    assert check_objects([deployment(), statefulset(), service("catalog", {"a": "b"})]) == []
    bad = deployment()
    pod = bad["spec"]["template"]["spec"]
    pod["hostNetwork"] = True
    pod["containers"][0]["stdin"] = True
    pod["containers"][0]["imagePullPolicy"] = "Always"
    pod["securityContext"]["seccompProfile"]["type"] = "Unconfined"
    pod["containers"][0]["resources"]["limits"]["ephemeral-storage"] = "1Gi"
    pod["volumes"].append({"name": "host", "hostPath": {"path": "/"}})
    pod["containers"][0]["env"][1]["valueFrom"]["fieldRef"]["apiVersion"] = "v2"
    errors = check_objects([bad, {"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "d"}}])
    assert errors == [
        "Deployment/catalog.spec.template.spec.securityContext.seccompProfile.type: 'Unconfined' is not handled "
        "(only 'RuntimeDefault')",
        "Deployment/catalog.spec.template.spec.containers[0].env[1].valueFrom.fieldRef.apiVersion: 'v2' is not "
        "handled (only 'v1')",
        "Deployment/catalog.spec.template.spec.containers[0].resources.limits.ephemeral-storage: not handled by "
        "the podman runner",
        "Deployment/catalog.spec.template.spec.containers[0].stdin: not handled by the podman runner",
        "Deployment/catalog.spec.template.spec.containers[0].imagePullPolicy: 'Always' is not handled "
        "(only 'IfNotPresent', 'Never')",
        "Deployment/catalog.spec.template.spec.volumes[3].hostPath: not handled by the podman runner",
        "Deployment/catalog.spec.template.spec.hostNetwork: not handled by the podman runner",
        "DaemonSet/d: kind DaemonSet is not handled by the podman runner",
    ]
    with pytest.raises(Unsupported, match="hostNetwork"):
        Cluster([bad], secrets={}, state_dir=Path("/nonexistent"))


def test_kinds_without_pods_are_listed_with_why(podman: FakePodman, tmp_path: Path) -> None:
    policy = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "deny"}, "spec": {}}
    cron = {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": "renew"},
        "spec": {"schedule": "*/15 * * * *", "jobTemplate": {"spec": job("OnFailure", 3)["spec"]}},
    }
    c = cluster([deployment(), policy, cron], podman, tmp_path)
    assert c.not_run == {
        "NetworkPolicy/deny": "podman's bridge does not enforce NetworkPolicies (tests/deploy checks them offline)",
        "CronJob/renew": "a schedule the test does not wait for; the pods it would start are checked field by field",
    }
    cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["hostPID"] = True
    assert check_objects([cron]) == [
        "CronJob/renew.spec.jobTemplate.spec.template.spec.hostPID: not handled by the podman runner"
    ]


def test_a_pod_with_an_api_token_is_refused(podman: FakePodman, tmp_path: Path) -> None:
    d = deployment()
    del d["spec"]["template"]["spec"]["automountServiceAccountToken"]
    account = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "catalog"}}
    with pytest.raises(Unsupported, match="no API server"):
        cluster([d, account], podman, tmp_path).start("catalog")
    account["automountServiceAccountToken"] = False  # the account's setting holds when the pod has none
    cluster([d, account], podman, tmp_path / "2").start("catalog")[0]._stop.set()


@pytest.mark.parametrize("overlay", ["local", "production"])
def test_the_overlays_have_no_field_the_runner_cannot_honour(overlay: str) -> None:
    """The system test runs `local`; `production` uses no field it could not run either."""
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(OVERLAYS / overlay)], capture_output=True, text=True, check=True
    ).stdout
    objects = [o for o in yaml.safe_load_all(rendered) if o]
    assert check_objects(objects) == []
    assert {"Deployment", "StatefulSet", "Job", "Service"} <= {o["kind"] for o in objects}


def test_quantities() -> None:
    assert quantity("250m") == 0.25
    assert quantity("1") == 1
    assert quantity("160Mi") == 160 * 2**20
    assert quantity("1G") == 1e9
    assert quantity(2) == 2
    with pytest.raises(Unsupported):
        quantity("1 gig")


# --- what a pod becomes -------------------------------------------------------------------


def test_a_container_becomes_a_hardened_podman_run(podman: FakePodman, tmp_path: Path) -> None:
    c = cluster([deployment()], podman, tmp_path)
    [pod] = c.start("catalog")
    try:
        assert pod.ip == "10.89.200.10"
        create = podman.named("pod", "create")[0]
        assert create[create.index("--ip") + 1] == "10.89.200.10"
        assert create[create.index("--network") + 1] == "meshop-test-t1"
        run = podman.named("run", "--detach")[0]
        assert run[run.index("--user") + 1] == "1000:1000"
        for flag in (
            "--group-add=1000",
            "--read-only",
            "--read-only-tmpfs=false",
            "--cap-drop=all",
            "--security-opt=no-new-privileges",
            f"--memory={160 * 2**20}",
            "--cpus=1",
            f"--memory-reservation={96 * 2**20}",
            "--cpu-shares=102",
            "--restart=always",
            "--pull=never",
        ):
            assert flag in run, flag
        assert run[run.index("--stop-timeout") + 1] == "25"
        assert run[-3:] == ("localhost/meshop:dev", "run", "catalog")  # $(SERVICE) expanded
        mounts = [run[i + 1] for i, a in enumerate(run) if a in ("--volume", "--mount")]
        assert mounts[0] == "type=volume,source=catalog-" + pod.name.split("-")[1] + "-tmp,destination=/tmp"
        assert mounts[1] == f"{tmp_path}/state/{pod.name}/volumes/identity:/etc/meshop/identity:ro"
        assert mounts[2] == "type=volume,source=t1-shared,destination=/var/lib/x"
        tmpfs = podman.named("volume", "create")[0]
        assert f"o=mode=2777,gid=1000,nr_blocks={64 * 2**20 // os.sysconf('SC_PAGE_SIZE')}" in tmpfs
        env = dict(line.split("=", 1) for line in Path(run[run.index("--env-file") + 1]).read_text().splitlines())
        assert stat.S_IMODE(os.stat(run[run.index("--env-file") + 1]).st_mode) == 0o600
        assert env == {
            "SERVICE": "catalog",
            "MESHOP_ADVERTISE_HOST": "10.89.200.10",
            "MESHOP_INSTANCE_ID": pod.name,
            "MESHOP_ZONE": "",  # no such label: empty, as the kubelet gives it
            "URL": "postgresql://u:p@postgres:5432",
            "WHERE": "postgresql://u:p@postgres:5432/x $(URL) $(NOPE)",
            "MEM": "160",
        }
    finally:
        pod._stop.set()


@pytest.mark.skipif(os.geteuid() != 0, reason="fsGroup ownership needs root (as podman does)")
def test_secret_files_have_their_items_modes_and_fs_group(podman: FakePodman, tmp_path: Path) -> None:
    c = cluster([deployment()], podman, tmp_path)
    [pod] = c.start("catalog")
    pod._stop.set()
    root = tmp_path / "state" / pod.name / "volumes" / "identity"
    files = {p.relative_to(root).as_posix(): p for p in root.rglob("*") if p.is_file()}
    assert set(files) == {"trust.json", "services/catalog.json"}
    assert files["services/catalog.json"].read_bytes() == b"{1}"
    assert stat.S_IMODE(files["trust.json"].stat().st_mode) == 0o440
    assert stat.S_IMODE(files["services/catalog.json"].stat().st_mode) == 0o440  # 0400 | g+r for fsGroup
    assert files["trust.json"].stat().st_gid == 1000
    claim = tmp_path / "volumes" / "t1-shared"
    assert (claim.stat().st_gid, stat.S_IMODE(claim.stat().st_mode)) == (1000, 0o2775)


def test_command_replaces_the_entrypoint_and_args_the_cmd(podman: FakePodman, tmp_path: Path) -> None:
    d = deployment()
    ctr = d["spec"]["template"]["spec"]["containers"][0]
    ctr["command"] = ["/opt/meshop/bin/nats-server"]
    ctr["args"] = ["--name", "$(MESHOP_INSTANCE_ID)"]
    c = cluster([d], podman, tmp_path)
    [pod] = c.start("catalog")
    pod._stop.set()
    run = podman.named("run", "--detach")[0]
    assert run[run.index("--entrypoint") + 1] == '["/opt/meshop/bin/nats-server"]'
    assert run[-3:] == ("localhost/meshop:dev", "--name", pod.name)


def test_run_as_non_root_is_checked_against_the_effective_user(podman: FakePodman, tmp_path: Path) -> None:
    d = deployment()
    d["spec"]["template"]["spec"]["securityContext"]["runAsUser"] = 0
    with pytest.raises(PodFailed, match="would run as root"):
        cluster([d], podman, tmp_path).start("catalog")
    del d["spec"]["template"]["spec"]["securityContext"]["runAsUser"]
    with pytest.raises(PodFailed, match="not numeric"):
        cluster([d], FakePodman(tmp_path), tmp_path / "2", image_user="meshop").start("catalog")


def test_a_missing_secret_fails_the_pod(podman: FakePodman, tmp_path: Path) -> None:
    with pytest.raises(PodFailed, match=r"Secret 'meshop-(identity|database)' does not exist"):
        cluster([deployment()], podman, tmp_path, secrets={}).start("catalog")


def test_services_resolve_to_their_pods_and_the_external_stand_ins(podman: FakePodman, tmp_path: Path) -> None:
    postgres = copy.deepcopy(deployment("postgres"))
    objects = [
        deployment(),
        statefulset(),
        postgres,
        service("catalog", {"app.kubernetes.io/name": "catalog"}),
        service("nats", {"app.kubernetes.io/name": "nats"}, 4222),
        service("nats-headless", {"app.kubernetes.io/name": "nats"}, 4222, headless=True),
        service("postgres", {"app.kubernetes.io/name": "postgres"}, 5432),
    ]
    c = cluster(objects, podman, tmp_path, external={"postgres": "10.89.200.1"})
    with pytest.raises(PodFailed, match="run outside podman"):
        c.start("postgres")
    [nats] = c.start("nats")
    [catalog] = c.start("catalog")
    for p in (nats, catalog):
        p._stop.set()
    assert nats.name == "nats-0"
    create = podman.named("pod", "create")[-1]
    hosts = [create[i + 1] for i, a in enumerate(create) if a == "--add-host"]
    assert "nats:10.89.200.10" in hosts
    assert "nats.default.svc.cluster.local:10.89.200.10" in hosts
    assert "nats-0.nats-headless:10.89.200.10" in hosts
    assert "postgres:10.89.200.1" in hosts
    assert "catalog:10.89.200.11" in hosts
    links = c.service_links(catalog)
    assert links == {}  # enableServiceLinks: false
    catalog.workload.obj["spec"]["template"]["spec"]["enableServiceLinks"] = True
    links = c.service_links(catalog)
    assert links["NATS_SERVICE_HOST"] == "10.89.200.10"
    assert links["NATS_PORT_4222_TCP"] == "tcp://10.89.200.10:4222"
    assert "NATS_HEADLESS_SERVICE_HOST" not in links  # headless: no links


def test_do_not_schedule_on_a_label_the_node_lacks_leaves_the_pod_pending(podman: FakePodman, tmp_path: Path) -> None:
    d = deployment()
    d["spec"]["template"]["spec"]["topologySpreadConstraints"][0]["whenUnsatisfiable"] = "DoNotSchedule"
    with pytest.raises(PodFailed, match="Pending"):
        cluster([d], podman, tmp_path).start("catalog")
    c = cluster([d], FakePodman(tmp_path), tmp_path / "2", node_labels={"topology.kubernetes.io/zone": "a"})
    c.start("catalog")[0]._stop.set()


def test_delete_runs_pre_stop_then_stops_with_what_is_left_of_the_grace(podman: FakePodman, tmp_path: Path) -> None:
    d = deployment()
    d["spec"]["template"]["spec"]["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"] = 0.3
    d["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 4
    c = cluster([d], podman, tmp_path)
    [pod] = c.start("catalog")
    began = time.monotonic()
    c.delete_pod(pod)
    stop = podman.named("stop")[0]
    at = podman.times[podman.calls.index(stop)]
    assert at - began >= 0.3  # after the hook
    assert stop[:3] == ("stop", "--time", "4")  # ceil(4 - 0.3)
    assert podman.named("pod", "rm")[0][-1] == pod.name
    assert pod.exit_codes == {"meshop": 0}
    assert ("volume", "rm", "--force", pod.volumes[0]) in podman.calls
    assert c.pods == {}


def job(restart: str, backoff: int) -> dict[str, Any]:
    d = deployment("migrate")
    spec = d["spec"]["template"]["spec"]
    spec["restartPolicy"] = restart
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        spec["containers"][0].pop(probe)
    spec["containers"][0].pop("lifecycle")
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "migrate"},
        "spec": {"backoffLimit": backoff, "ttlSecondsAfterFinished": 60, "template": d["spec"]["template"]},
    }


def test_a_job_is_retried_up_to_its_backoff_limit(podman: FakePodman, tmp_path: Path) -> None:
    c = cluster([job("OnFailure", 2)], podman, tmp_path)
    podman.wait_codes = [1, 1, 0]
    c.run_job("migrate")
    assert len(podman.named("pod", "create")) == 1  # OnFailure: the same pod, its container started again
    assert len(podman.named("start")) == 2
    assert "--restart=no" in podman.named("run", "--detach")[0]

    podman2 = FakePodman(tmp_path / "b")
    c = cluster([job("Never", 1)], podman2, tmp_path / "b")
    podman2.wait_codes = [3, 3]
    with pytest.raises(PodFailed, match="backoffLimit 1"):
        c.run_job("migrate")
    assert len(podman2.named("pod", "create")) == 2  # Never: a new pod per attempt
    assert c.pods == {}


# --- probes -------------------------------------------------------------------------------


@pytest.fixture
def http_server() -> Iterator[tuple[int, list[int]]]:
    answers = [200]

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(answers[0])
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server.server_address[1], answers
    server.shutdown()
    server.server_close()


def served_on(port: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """A Deployment whose container's port `http` is `port` (a test server on loopback), and that container."""
    d = deployment()
    ctr = d["spec"]["template"]["spec"]["containers"][0]
    ctr["ports"][0]["containerPort"] = port
    return d, ctr


def test_http_probes_count_2xx_3xx_as_success_by_port_name(
    http_server: tuple[int, list[int]], podman: FakePodman, tmp_path: Path
) -> None:
    port, answers = http_server
    d, ctr = served_on(port)
    c = cluster([d], podman, tmp_path)
    [pod] = c.start("catalog")
    pod._stop.set()
    pod.ip = "127.0.0.1"
    probe = {"httpGet": {"path": "/ready", "port": "http"}, "timeoutSeconds": 1}
    assert c.probe(pod, ctr, probe)
    answers[0] = 302
    assert c.probe(pod, ctr, probe)
    answers[0] = 503
    assert not c.probe(pod, ctr, probe)
    assert c.probe(pod, ctr, {"tcpSocket": {"port": port}})
    assert not c.probe(pod, ctr, {"httpGet": {"path": "/", "port": 1}, "timeoutSeconds": 1})


def until(check: Callable[[], object], within_s: float = 5.0) -> None:
    """Until `check()` is true (the probes run in threads of their own); fails past `within_s`."""
    deadline = time.monotonic() + within_s
    while not check():
        assert time.monotonic() < deadline, "not true in time"
        time.sleep(0.02)


def test_readiness_follows_the_probe_and_a_failing_liveness_probe_restarts(
    http_server: tuple[int, list[int]], podman: FakePodman, tmp_path: Path
) -> None:
    port, answers = http_server
    d, ctr = served_on(port)
    fast = {"periodSeconds": 0.05, "failureThreshold": 2}
    for name in ("startupProbe", "readinessProbe", "livenessProbe"):
        ctr[name].update(fast)
    c = cluster([d], podman, tmp_path)
    answers[0] = 503
    c._allocate_ip = lambda: "127.0.0.1"  # type: ignore[method-assign]
    [pod] = c.start("catalog")
    try:
        until(lambda: podman.named("restart"))  # the startup probe failed twice
        assert not pod.ready
        answers[0] = 200
        c.wait_ready([pod], timeout=5)
        answers[0] = 500
        until(lambda: not pod.ready and len(podman.named("restart")) >= 2)
        assert "livenessProbe failed 2 times" in json.dumps(pod.events)
        assert c.restarts(pod) == pod.restarts + 1  # and the one podman made (FakePodman: 1)
    finally:
        pod._stop.set()
