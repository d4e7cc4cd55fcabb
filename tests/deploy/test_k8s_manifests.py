"""deploy/k8s: every overlay and component renders offline and passes the checks a cluster would not make.

Each overlay is rendered with `kubectl kustomize` alone and with every opt-in component,
and the production overlay with each component alone (components only add objects and
patches: "each alone" finds one that needs another, "all" finds two that clash; every
subset of both overlays would take 16 renders, ~0.4 s of CPU each). Every object is
validated against the pinned Kubernetes version's schemas (strict: an unknown field
fails), as `kubernetes-validate --strict -k 1.33.0` does; every render is read by
checks that return what they find wrong, and each check is also run on a copy broken on
purpose (`test_a_check_catches_*`), so none passes vacuously.
"""

from __future__ import annotations

import concurrent.futures
import copy
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import kubernetes_validate.utils
import msgspec
import pytest
import yaml

from meshop.contracts import SERVICES, operations_of
from meshop.mesh.api.operation import Access
from meshop.mesh.security.nats_auth import NatsCredentials
from meshop.mesh.service.lifecycle import CLOSE_TIMEOUT_S
from meshop.mesh.service.settings import Settings
from meshop.runtime.nats_server import find_binary
from meshop.runtime.nats_users import VERIFIES, render_server_config
from meshop.services import PROCESSES, load_definition

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
#: The Kubernetes version the manifests are written for (sleep preStop: 1.30+; matchLabelKeys).
KUBERNETES_VERSION = "1.33.0"
OVERLAYS = ("local", "production")
OPTIONAL = ("otel-collector", "prometheus", "grafana-dashboard")
#: Who reads every process's /metrics (and /health): the console's scraper and Prometheus.
SCRAPERS = frozenset({"console", "prometheus"})
MESHOP = frozenset(PROCESSES)
Obj = dict[str, Any]


# --- rendering ---------------------------------------------------------------------------


def _combinations() -> list[tuple[str, tuple[str, ...]]]:
    combos = [(o, ()) for o in OVERLAYS]
    combos += [("production", (c,)) for c in OPTIONAL]
    combos += [(o, OPTIONAL) for o in OVERLAYS]
    return combos


def _kustomize(overlay: str, components: tuple[str, ...], workdir: Path) -> list[Obj]:
    """Render `overlay` with `components` added, as a user adds them to their overlay."""
    if not components:
        target = K8S / "overlays" / overlay
    else:
        target = workdir / f"{overlay}-{'-'.join(components)}"
        target.mkdir()
        rel = os.path.relpath(K8S, target)  # kustomize refuses absolute paths
        (target / "kustomization.yaml").write_text(
            yaml.safe_dump(
                {
                    "namespace": "meshop",
                    "resources": [f"{rel}/overlays/{overlay}"],
                    "components": [f"{rel}/components/{c}" for c in components],
                }
            )
        )
    out = subprocess.run(["kubectl", "kustomize", str(target)], capture_output=True, text=True, check=False)
    assert out.returncode == 0, f"kubectl kustomize {overlay} {components}: {out.stderr}"
    return [d for d in yaml.safe_load_all(out.stdout) if d]


@pytest.fixture(scope="module")
def renders(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, tuple[str, ...]], list[Obj]]:
    if shutil.which("kubectl") is None:
        pytest.fail("kubectl is needed to render deploy/k8s (it is part of this machine's image: MACHINE.md)")
    workdir = tmp_path_factory.mktemp("kustomize")
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        futures = {combo: pool.submit(_kustomize, *combo, workdir) for combo in _combinations()}
        return {combo: future.result() for combo, future in futures.items()}


@pytest.fixture(scope="module")
def everything(renders: dict[tuple[str, tuple[str, ...]], list[Obj]]) -> dict[str, list[Obj]]:
    """Each overlay with every component."""
    return {overlay: renders[(overlay, OPTIONAL)] for overlay in OVERLAYS}


def _named(objs: list[Obj], kind: str, name: str) -> Obj:
    found = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


WORKLOADS = ("Deployment", "StatefulSet", "Job", "CronJob")
#: Run to completion: no probes, no PodDisruptionBudget.
BATCH = ("Job", "CronJob")


def _workloads(objs: list[Obj]) -> Iterator[Obj]:
    return (o for o in objs if o["kind"] in WORKLOADS)


def _template(workload: Obj) -> Obj:
    spec = workload["spec"]["jobTemplate"]["spec"] if workload["kind"] == "CronJob" else workload["spec"]
    template: Obj = spec["template"]
    return template


def _containers(workload: Obj) -> list[Obj]:
    spec = _template(workload)["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


# --- checks: each returns what it finds wrong ----------------------------------------------


def problems_of_containers(objs: list[Obj]) -> list[str]:
    """Probes (not for a Job's run-to-completion pod), requests and limits, a hardened securityContext."""
    found = []
    for w in _workloads(objs):
        pod = _template(w)["spec"]
        pod_sc = pod.get("securityContext", {})
        for c in _containers(w):
            where = f"{w['kind']}/{w['metadata']['name']} container {c['name']}"
            sc = c.get("securityContext", {})
            if w["kind"] not in BATCH:
                found += [f"{where}: no {p}" for p in ("startupProbe", "readinessProbe", "livenessProbe") if p not in c]
            for bound in ("requests", "limits"):
                missing = {"cpu", "memory"} - set(c.get("resources", {}).get(bound, {}))
                found += [f"{where}: no {bound}.{r}" for r in sorted(missing)]
            if sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is not True:
                found.append(f"{where}: runAsNonRoot is not true")
            if sc.get("runAsUser", pod_sc.get("runAsUser", 0)) == 0:
                found.append(f"{where}: no non-root runAsUser")
            if sc.get("readOnlyRootFilesystem") is not True:
                found.append(f"{where}: root filesystem is writable")
            if sc.get("allowPrivilegeEscalation") is not False:
                found.append(f"{where}: privilege escalation allowed")
            if sc.get("capabilities", {}).get("drop") != ["ALL"]:
                found.append(f"{where}: capabilities not dropped")
            seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {}))
            if seccomp.get("type") != "RuntimeDefault":
                found.append(f"{where}: seccomp profile is not RuntimeDefault")
    return found


def _matches(selector: Obj, labels: dict[str, str]) -> bool:
    """Label selector semantics: matchLabels and matchExpressions (In, NotIn, Exists, DoesNotExist)."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": labels.get(key) not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


def problems_of_disruption_budgets(objs: list[Obj]) -> list[str]:
    """Every Deployment and StatefulSet has exactly one PodDisruptionBudget selecting its pods."""
    pdbs = [o for o in objs if o["kind"] == "PodDisruptionBudget"]
    found = []
    for w in _workloads(objs):
        if w["kind"] in BATCH:
            continue
        labels = _template(w)["metadata"]["labels"]
        covering = [p["metadata"]["name"] for p in pdbs if _matches(p["spec"]["selector"], labels)]
        if len(covering) != 1:
            found.append(f"{w['kind']}/{w['metadata']['name']}: {len(covering)} PodDisruptionBudgets ({covering})")
    return found


def problems_of_images(objs: list[Obj]) -> list[str]:
    """Every image is pinned: a tag that is not `latest`, or a digest."""
    found = []
    for w in _workloads(objs):
        for c in _containers(w):
            image = c["image"]
            name, _, tag = image.rpartition(":") if ":" in image.rsplit("/", 1)[-1] else (image, "", "")
            if "@sha256:" not in image and (not name or tag in ("", "latest")):
                found.append(f"{w['metadata']['name']}/{c['name']}: image {image} is not pinned")
    return found


#: What a secret looks like: a private key, a URL with a password, a password or token
#: assignment, or a long random-looking string (`secrets.token_urlsafe(24)` and up).
SECRET_LOOKING = (
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"\b[a-z][a-z0-9+.-]*://[^/\s:@]+:[^/\s@]+@"),
    re.compile(r"(?i)\b(password|passwd|secret|token|api[_-]?key)\b\W{0,3}\s*[:=]\s*\S{6,}"),
    re.compile(r"(?=[A-Za-z0-9_\-+/]*[A-Z])(?=[A-Za-z0-9_\-+/]*[a-z])(?=[A-Za-z0-9_\-+/]*[0-9])[A-Za-z0-9_\-+/]{32,}"),
)


def problems_of_config_maps(objs: list[Obj]) -> list[str]:
    """No ConfigMap value (nor a plain env value) looks like a secret: those come from Secrets."""
    found = []
    for o in objs:
        values: list[tuple[str, str]] = []
        if o["kind"] == "ConfigMap":
            values = [(f"ConfigMap/{o['metadata']['name']} {k}", v) for k, v in o.get("data", {}).items()]
        elif o["kind"] in WORKLOADS:
            values = [
                (f"{o['metadata']['name']} env {e['name']}", e["value"])
                for c in _containers(o)
                for e in c.get("env", [])
                if "value" in e
            ]
        elif o["kind"] == "Secret":
            found.append(f"Secret/{o['metadata']['name']} is in the manifests (generate it: meshop deploy secrets)")
        for where, value in values:
            found += [f"{where}: looks like a secret ({p.pattern[:24]}...)" for p in SECRET_LOOKING if p.search(value)]
    return found


# --- NetworkPolicy edges --------------------------------------------------------------------

Edge = tuple[str, str, int]  # (from workload or "*" for anywhere, to workload, port)


def _pods(objs: list[Obj]) -> dict[str, dict[str, str]]:
    return {w["metadata"]["name"]: _template(w)["metadata"]["labels"] for w in _workloads(objs)}


def _workload_of(name: str) -> str:
    return "migrate" if name == "meshop-migrate" else name


def allowed_edges(objs: list[Obj]) -> set[Edge]:
    """Every (source, destination, port) the NetworkPolicies admit, between the rendered pods."""
    pods = _pods(objs)
    policies = [o for o in objs if o["kind"] == "NetworkPolicy"]
    edges: set[Edge] = set()
    for policy in policies:
        spec = policy["spec"]
        targets = [n for n, labels in pods.items() if _matches(spec["podSelector"], labels)]
        for rule in spec.get("ingress", []):
            sources: set[str] = set()
            for peer in rule.get("from", [{}]):
                if set(peer) == {"podSelector"}:
                    sources |= {n for n, labels in pods.items() if _matches(peer["podSelector"], labels)}
                else:  # no `from`, an ipBlock or another namespace: from anywhere
                    sources.add("*")
            ports = [p["port"] for p in rule.get("ports", [])] or [0]  # 0: every port
            edges |= {(_workload_of(s), _workload_of(t), port) for s in sources for t in targets for port in ports}
    return edges


def callers_of(process: str) -> set[str]:
    """Who may call `process`'s operations, from the contracts' allow-lists.

    An INTERNAL operation names its callers (`Operation.callers`); every other operation is
    routed by the gateway; every process but users fetches users' signing keys (VERIFIES).
    """
    found: set[str] = set()
    if process in SERVICES:
        for op in operations_of(process):
            found |= set(op.callers) if op.access is Access.INTERNAL else {"gateway"}
    if process == "users":
        found |= VERIFIES
    return found


def expected_edges(objs: list[Obj]) -> set[Edge]:
    """The edges the allow-lists, the gateway's ingress, the scrapers and NATS justify."""
    present = {_workload_of(n) for n in _pods(objs)}
    with_database = {p for p in PROCESSES if load_definition(p).migrations is not None}
    edges: set[Edge] = {("*", "gateway", 8080)}
    for process in MESHOP - {"gateway"}:
        edges |= {(c, process, 8080) for c in callers_of(process) | SCRAPERS}
    edges |= {(p, "nats", 4222) for p in MESHOP} | {("nats", "nats", 6222)}
    edges |= {(p, "postgres", 5432) for p in with_database | {"migrate"}}
    edges |= {("gateway", "redis", 6379)}
    edges |= {(p, "otel-collector", port) for p in MESHOP for port in (4317, 4318)}
    edges |= {("grafana", "prometheus", 9090)}
    return {(s, t, port) for s, t, port in edges if (s == "*" or s in present) and t in present}


def problems_of_network_policies(objs: list[Obj]) -> list[str]:
    found = []
    deny = [
        p
        for p in objs
        if p["kind"] == "NetworkPolicy" and p["spec"]["podSelector"] == {} and not p["spec"].get("ingress")
    ]
    if not deny:
        found.append("no default-deny ingress NetworkPolicy")
    allowed, expected = allowed_edges(objs), expected_edges(objs)
    found += [f"edge {e} has no allow-list entry behind it" for e in sorted(allowed - expected)]
    found += [f"edge {e} is allowed by the contracts but not by a NetworkPolicy" for e in sorted(expected - allowed)]
    return found


# --- the tests -------------------------------------------------------------------------------


def test_every_overlay_and_component_renders(renders: dict[tuple[str, tuple[str, ...]], list[Obj]]) -> None:
    for (overlay, components), objs in renders.items():
        kinds = {o["kind"] for o in objs}
        assert {"Deployment", "StatefulSet", "NetworkPolicy", "PodDisruptionBudget"} <= kinds, (overlay, components)
        for component in components:
            name = component.removesuffix("-dashboard")
            assert any(name in o["metadata"]["name"] for o in objs), (overlay, component)


@pytest.fixture(scope="module")
def schemas_read_once() -> Iterator[None]:
    """kubernetes-validate reads its (2 MB) definitions again for every object: ten times the
    time of the validation itself. The same function, remembered."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(kubernetes_validate.utils, "schema_contents", cache(kubernetes_validate.utils.schema_contents))
        yield


@pytest.mark.usefixtures("schemas_read_once")
def test_kubernetes_validate_strict_accepts_every_object(renders: dict[Any, list[Obj]]) -> None:
    unique = {json.dumps(o, sort_keys=True): o for objs in renders.values() for o in objs}
    for obj in unique.values():
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


@pytest.mark.usefixtures("schemas_read_once")
def test_kubernetes_validate_strict_refuses_an_unknown_field(everything: dict[str, list[Obj]]) -> None:
    broken = copy.deepcopy(_named(everything["local"], "Deployment", "catalog"))
    broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}  # a typo
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize(
    "check",
    [
        problems_of_containers,
        problems_of_disruption_budgets,
        problems_of_images,
        problems_of_config_maps,
        problems_of_network_policies,
    ],
)
def test_every_render_passes(check: Any, renders: dict[tuple[str, tuple[str, ...]], list[Obj]]) -> None:
    for combo, objs in renders.items():
        assert check(objs) == [], combo


def _container(objs: list[Obj], kind: str, name: str) -> Obj:
    return _named(objs, kind, name)["spec"]["template"]["spec"]["containers"][0]


def _break(objs: list[Obj], how: str) -> list[Obj]:
    objs = copy.deepcopy(objs)
    if how == "no liveness probe":
        del _container(objs, "Deployment", "orders")["livenessProbe"]
    elif how == "no startup probe on nats":
        del _container(objs, "StatefulSet", "nats")["startupProbe"]
    elif how == "no memory limit":
        del _container(objs, "Deployment", "gateway")["resources"]["limits"]["memory"]
    elif how == "root":
        _named(objs, "Deployment", "users")["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] = False
        _container(objs, "Deployment", "users")["securityContext"].pop("runAsNonRoot")
    elif how == "writable root filesystem":
        _container(objs, "Deployment", "redis")["securityContext"]["readOnlyRootFilesystem"] = False
    elif how == "capabilities kept":
        del _container(objs, "Deployment", "console")["securityContext"]["capabilities"]
    return objs


@pytest.mark.parametrize(
    "how",
    [
        "no liveness probe",
        "no startup probe on nats",
        "no memory limit",
        "root",
        "writable root filesystem",
        "capabilities kept",
    ],
)
def test_a_check_catches_a_weak_container(how: str, everything: dict[str, list[Obj]]) -> None:
    assert problems_of_containers(_break(everything["local"], how)) != []


def test_a_check_catches_a_deployment_without_a_disruption_budget(everything: dict[str, list[Obj]]) -> None:
    objs = [
        o for o in everything["production"] if (o["kind"], o["metadata"]["name"]) != ("PodDisruptionBudget", "payments")
    ]
    assert problems_of_disruption_budgets(objs) == ["Deployment/payments: 0 PodDisruptionBudgets ([])"]


@pytest.mark.parametrize("image", ["registry.example.com/meshop:latest", "registry.example.com/meshop", "redis"])
def test_a_check_catches_an_unpinned_image(image: str, everything: dict[str, list[Obj]]) -> None:
    objs = copy.deepcopy(everything["production"])
    _container(objs, "Deployment", "shipping")["image"] = image
    assert len(problems_of_images(objs)) == 1


@pytest.mark.parametrize(
    "value",
    [
        "url: postgresql://meshop:s3cret-pw@postgres:5432",
        "password: hunter2hunter2",
        "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEI...",
        "token = Yx3v_0aQ9kVn2Lr8Tq5Wz1Bc7Dd4Ee6Ff0Gg",  # secrets.token_urlsafe-like
    ],
)
def test_a_check_catches_a_secret_in_a_config_map(value: str, everything: dict[str, list[Obj]]) -> None:
    objs = copy.deepcopy(everything["local"])
    config = next(o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("nats-config"))
    config["data"]["nats.conf"] += "\n" + value
    assert problems_of_config_maps(objs) != []


@pytest.mark.parametrize("change", ["a caller too many", "a caller missing", "no default deny"])
def test_a_check_catches_a_network_policy_edge_without_an_allow_list_entry(
    change: str, everything: dict[str, list[Obj]]
) -> None:
    objs = copy.deepcopy(everything["local"])
    catalog = _named(objs, "NetworkPolicy", "meshop-catalog")
    sources = catalog["spec"]["ingress"][0]["from"]
    if change == "a caller too many":
        sources.append({"podSelector": {"matchLabels": {"app.kubernetes.io/name": "shipping"}}})  # never calls catalog
        assert problems_of_network_policies(objs) == [
            "edge ('shipping', 'catalog', 8080) has no allow-list entry behind it"
        ]
    elif change == "a caller missing":
        inventory = {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "inventory"}}}
        sources.remove(inventory)  # inventory looks products up (catalog.LOOKUP's callers)
        assert problems_of_network_policies(objs) == [
            "edge ('inventory', 'catalog', 8080) is allowed by the contracts but not by a NetworkPolicy"
        ]
    else:
        objs = [o for o in objs if o["metadata"]["name"] != "meshop-default-deny"]
        assert problems_of_network_policies(objs) == ["no default-deny ingress NetworkPolicy"]


def test_the_allow_lists_give_the_edges_a_reader_expects() -> None:
    """A spot check of `callers_of` against the contracts as the security issue describes them."""
    assert callers_of("payments") == {"orders", "gateway"}
    assert callers_of("catalog") >= {"orders", "inventory", "gateway"}
    assert "shipping" not in callers_of("catalog")
    assert callers_of("users") >= MESHOP - {"users"}


# --- each process, NATS, drain ----------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_process_has_a_deployment_service_and_account(overlay: str, everything: dict[str, list[Obj]]) -> None:
    objs = everything[overlay]
    for process in PROCESSES:
        deployment = _named(objs, "Deployment", process)
        pod = deployment["spec"]["template"]["spec"]
        container = pod["containers"][0]
        assert container["args"] == ["run", process]
        assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
        assert container["livenessProbe"]["httpGet"]["path"] == "/health"
        assert all(container[p]["periodSeconds"] == 5 for p in ("startupProbe", "readinessProbe", "livenessProbe"))
        env = {e["name"]: e for e in container["env"]}
        assert env["MESHOP_ADVERTISE_HOST"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
        assert "topology.kubernetes.io/zone" in env["MESHOP_ZONE"]["valueFrom"]["fieldRef"]["fieldPath"]
        assert pod["serviceAccountName"] == process
        assert pod["automountServiceAccountToken"] is False
        assert _named(objs, "ServiceAccount", process)["automountServiceAccountToken"] is False
        assert _named(objs, "Service", process)["spec"]["selector"] == {"app.kubernetes.io/name": process}
        keys = {t["topologyKey"] for t in pod["topologySpreadConstraints"]}
        assert keys == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert {"/tmp", "/var/lib/meshop"} <= mounts


def test_production_runs_two_of_each_but_the_console_and_scales_them(everything: dict[str, list[Obj]]) -> None:
    objs = everything["production"]
    hpas = {o["spec"]["scaleTargetRef"]["name"]: o for o in objs if o["kind"] == "HorizontalPodAutoscaler"}
    assert set(hpas) == MESHOP - {"console"}
    for process in PROCESSES:
        spec = _named(objs, "Deployment", process)["spec"]
        if process == "console":
            assert spec["replicas"] == 1
        else:  # the HPA owns the count: an apply must not reset it
            assert "replicas" not in spec, process
            assert hpas[process]["spec"]["minReplicas"] >= 2
        env = {e["name"]: e.get("value") for e in _container(objs, "Deployment", process)["env"]}
        assert env["MESHOP_NATS_REPLICAS"] == "3"
    assert _named(objs, "StatefulSet", "nats")["spec"]["replicas"] == 3
    assert all(o["spec"]["replicas"] == 1 for o in everything["local"] if o["kind"] in ("Deployment", "StatefulSet"))


def test_the_grace_period_covers_the_drain(everything: dict[str, list[Obj]]) -> None:
    """preStop sleep + deregister (bounded like a close) + 0.2 s + drain_timeout_s + closing fit in the grace period.

    The figures come from the code: change the drain timeout or the close bound and this fails.
    """
    defaults = Settings()
    for objs in everything.values():
        for process in PROCESSES:
            pod = _named(objs, "Deployment", process)["spec"]["template"]["spec"]
            pre_stop = pod["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"]
            needed = pre_stop + CLOSE_TIMEOUT_S + 0.2 + defaults.drain_timeout_s + CLOSE_TIMEOUT_S
            assert needed <= pod["terminationGracePeriodSeconds"], process


def _nats_config(objs: list[Obj], directory: Path) -> Path:
    config = next(o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("nats-config"))
    (directory / "nats.conf").write_text(config["data"]["nats.conf"])
    users = {p: NatsCredentials(user=p, password="p" * 24, inbox_prefix=f"_INBOX_{p}") for p in PROCESSES}
    (directory / "auth.conf").write_text(render_server_config(users))  # the Secret's auth.conf, as generated
    return directory / "nats.conf"


def _nats_test(config: Path, pod_name: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "POD_NAME": pod_name}
    return subprocess.run(
        [str(find_binary()), "-c", str(config), "-t"], capture_output=True, text=True, env=env, check=False
    )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_nats_server_accepts_the_rendered_configuration(
    overlay: str, everything: dict[str, list[Obj]], tmp_path: Path
) -> None:
    objs = everything[overlay]
    nats = _named(objs, "StatefulSet", "nats")
    container = nats["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["--config", "/etc/nats/nats.conf"]
    assert [e["name"] for e in container["env"]] == ["POD_NAME"]
    assert container["lifecycle"]["preStop"]["exec"]["command"][1:] == ["--signal", "ldm=1"]
    config = _nats_config(objs, tmp_path)
    result = _nats_test(config, f"{nats['metadata']['name']}-0")
    assert result.returncode == 0, result.stderr + result.stdout
    text = config.read_text()
    assert ("cluster {" in text) == (overlay == "production")
    if overlay == "production":
        routes = re.findall(r"nats://(nats-\d)\.nats-headless:6222", text)
        assert routes == [f"nats-{i}" for i in range(nats["spec"]["replicas"])]


def test_nats_server_refuses_a_broken_configuration(everything: dict[str, list[Obj]], tmp_path: Path) -> None:
    config = _nats_config(everything["production"], tmp_path)
    config.write_text(config.read_text().replace("lame_duck_duration: 30s", "lame_duck_duration: 5s"))
    assert _nats_test(config, "nats-0").returncode != 0


@cache
def _migrations() -> frozenset[str]:
    return frozenset(p for p in PROCESSES if load_definition(p).migrations is not None)


def test_secrets_are_files_from_secrets(everything: dict[str, list[Obj]]) -> None:
    """The database URL and admin password are `_FILE` settings naming Secret volumes, only where used."""
    objs = everything["production"]
    for process in PROCESSES:
        deployment = _named(objs, "Deployment", process)
        env = {e["name"]: e.get("value") for e in _container(objs, "Deployment", process)["env"]}
        volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
        assert ("MESHOP_DATABASE_URL_FILE" in env) == (process in _migrations()), process
        assert ("MESHOP_ADMIN_PASSWORD_FILE" in env) == (process == "users"), process
        assert volumes["nats"]["secret"]["secretName"] == f"meshop-nats-{process}"
        items = {i["key"]: i["path"] for i in volumes["identity"]["secret"]["items"]}
        assert items == {"trust.json": "trust.json", f"{process}.json": f"services/{process}.json"}


def test_prometheus_in_the_cluster_scrapes_as_the_documented_job(everything: dict[str, list[Obj]]) -> None:
    """components/prometheus runs the `meshop-pods` job deploy/prometheus/prometheus.yml shows
    commented out (only its namespace and the token's mount path are the cluster's own)."""
    text = (ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text()
    block = text[text.index("  # - job_name: meshop-pods") :]
    documented = yaml.safe_load("\n".join(line.removeprefix("  #")[1:] for line in block.splitlines()))[0]
    config = next(o for o in everything["local"] if o["metadata"]["name"].startswith("prometheus-config"))
    job = yaml.safe_load(config["data"]["prometheus.yml"])["scrape_configs"][0]
    assert job["kubernetes_sd_configs"][0].pop("namespaces") == {"own_namespace": True}
    assert job == documented
    deployment = _named(everything["local"], "Deployment", "prometheus")
    mounts = {
        m["name"]: m["mountPath"] for m in deployment["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    }
    scrape = next(v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "scrape")
    assert scrape["secret"]["secretName"] == "meshop-scrape"
    token_path = f"{mounts['scrape']}/{scrape['secret']['items'][0]['path']}"
    assert token_path == job["authorization"]["credentials_file"]


def _setting_names() -> set[str]:
    """Every `MESHOP_*` variable a process reads: the mesh's settings and the gateway's."""
    from meshop.gateway.app import GatewaySettings

    names = {f"MESHOP_{f.name.upper()}" for f in msgspec.structs.fields(Settings)}
    return names | {f"MESHOP_GATEWAY_{f.name.upper()}" for f in msgspec.structs.fields(GatewaySettings)}


def problems_of_settings(objs: list[Obj]) -> list[str]:
    """Every MESHOP_ variable the manifests set is a setting, or the `_FILE` form of one (a typo is a default)."""
    known = _setting_names()
    found = []
    for w in _workloads(objs):
        for c in _containers(w):
            for e in c.get("env", []):
                name = e["name"]
                if name.startswith("MESHOP_") and name not in known and name.removesuffix("_FILE") not in known:
                    found.append(f"{w['metadata']['name']}/{c['name']}: {name} is no setting")
    return found


def test_every_meshop_variable_is_a_setting(renders: dict[tuple[str, tuple[str, ...]], list[Obj]]) -> None:
    for combo, objs in renders.items():
        assert problems_of_settings(objs) == [], combo


def test_a_check_catches_a_misspelt_setting(everything: dict[str, list[Obj]]) -> None:
    objs = copy.deepcopy(everything["local"])
    _container(objs, "Deployment", "inventory")["env"].append({"name": "MESHOP_DRAIN_TIMEOUT", "value": "8"})
    assert problems_of_settings(objs) == ["inventory/meshop: MESHOP_DRAIN_TIMEOUT is no setting"]


def _secrets_mounted(workload: Obj) -> set[str]:
    found = set()
    for volume in _template(workload)["spec"].get("volumes", []):
        if "secret" in volume:
            found.add(volume["secret"]["secretName"])
        for source in volume.get("projected", {}).get("sources", []):
            if "secret" in source:
                found.add(source["secret"]["name"])
    return found


def test_only_the_issuer_holds_the_root_and_only_two_pods_a_token(everything: dict[str, list[Obj]]) -> None:
    """The identity root key is in the issuer's pod alone; an API token only where the API is used."""
    for objs in everything.values():
        root_holders = {
            w["metadata"]["name"] for w in _workloads(objs) if "meshop-identity-root" in _secrets_mounted(w)
        }
        assert root_holders == {"meshop-identity-issuer"}
        with_token = {
            w["metadata"]["name"]
            for w in _workloads(objs)
            if _template(w)["spec"].get("automountServiceAccountToken") is not False
        }
        assert with_token == {"meshop-identity-issuer", "prometheus"}
        issuer = _named(objs, "CronJob", "meshop-identity-issuer")
        role = _named(objs, "Role", "identity-issuer")
        assert role["rules"] == [
            {
                "apiGroups": [""],
                "resources": ["secrets"],
                "resourceNames": ["meshop-identity"],
                "verbs": ["get", "patch"],
            }
        ]
        assert _template(issuer)["spec"]["serviceAccountName"] == "identity-issuer"
