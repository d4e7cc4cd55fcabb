"""NetworkPolicies from the contracts: every rule is an allowed edge with a reason, and every reason a rule."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from meshop.cli.main import app
from meshop.contracts import SERVICES, operations_of
from meshop.deploy.network import DNS, LABEL, WORKLOADS, WORLD, Edge, edges, policies
from meshop.mesh.api.operation import Access
from meshop.runtime.migrations import with_database
from meshop.runtime.nats_users import permissions_of
from meshop.services import PROCESSES

Tuple = tuple[str, str, int | None, str]


def peer_name(peer: dict[str, Any]) -> str:
    if "ipBlock" in peer:
        assert peer == {"ipBlock": {"cidr": "0.0.0.0/0"}}
        return WORLD
    if "namespaceSelector" in peer:
        assert peer["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}}
        assert peer["podSelector"] == {"matchLabels": {"k8s-app": "kube-dns"}}
        return DNS
    [(label, name)] = peer["podSelector"]["matchLabels"].items()
    assert label == LABEL
    return str(name)


def rule_tuples(objects: list[dict[str, Any]]) -> tuple[set[Tuple], set[Tuple]]:
    """What the policies allow, read back: (source, target, port, protocol) from ingress rules and from egress rules."""
    ingress: set[Tuple] = set()
    egress: set[Tuple] = set()
    for policy in objects[1:]:
        [(label, workload)] = policy["spec"]["podSelector"]["matchLabels"].items()
        assert label == LABEL
        assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
        for rule in policy["spec"].get("ingress", []):
            sources = [peer_name(p) for p in rule["from"]] if "from" in rule else [WORLD]
            for port in rule["ports"]:
                ingress |= {(s, workload, port["port"], port["protocol"]) for s in sources}
        for rule in policy["spec"].get("egress", []):
            targets = [peer_name(p) for p in rule["to"]]
            for port in rule.get("ports", [{"port": None, "protocol": "TCP"}]):
                egress |= {(workload, t, port["port"], port["protocol"]) for t in targets}
    return ingress, egress


@pytest.fixture(scope="module")
def printed() -> list[dict[str, Any]]:
    """The policies as `meshop deploy network-policies` prints them, parsed."""
    result = CliRunner().invoke(app, ["deploy", "network-policies", "--namespace", "shop"])
    assert result.exit_code == 0, result.output
    return list(yaml.safe_load_all(result.stdout))


def test_the_printed_yaml_is_the_policies_and_starts_with_a_default_deny(printed: list[dict[str, Any]]) -> None:
    assert printed == policies(namespace="shop")
    assert printed[0]["spec"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    assert {p["kind"] for p in printed} == {"NetworkPolicy"}
    assert len({p["metadata"]["name"] for p in printed}) == len(printed) == 1 + len(WORKLOADS)


def test_every_rule_is_an_edge_and_every_edge_a_rule_on_both_ends(printed: list[dict[str, Any]]) -> None:
    ingress, egress = rule_tuples(printed)
    allowed = {(e.source, e.target, e.port, e.protocol) for e in edges()}
    from_anywhere = {(t, port, protocol) for s, t, port, protocol in allowed if s == WORLD}
    # An ingress from anywhere (the gateway's) covers the scrapers' edges to the same port.
    expected_ingress = {t for t in allowed if t[1] in WORKLOADS and (t[0] == WORLD or t[1:] not in from_anywhere)}
    expected_egress = {t for t in allowed if t[0] in WORKLOADS}
    assert ingress == expected_ingress
    assert egress == expected_egress
    assert ingress | egress == allowed


def ops(edge: Edge) -> list[Any]:
    service, _, names = edge.why.partition(": ")
    by_name = {op.name: op for op in operations_of(service)}
    assert service == edge.target
    return [by_name[name] for name in names.split(", ")]


@pytest.mark.parametrize("edge", edges(), ids=lambda e: f"{e.source}->{e.target}:{e.port}/{e.protocol}")
def test_every_edge_has_a_reason_that_holds(edge: Edge) -> None:
    """An allow-list entry, a route of the gateway, its ingress, a scraper, NATS, or the infrastructure."""
    if edge.kind == "caller":
        for op in ops(edge):
            if op.access is Access.INTERNAL:  # the contract's allow-list
                assert edge.source in op.callers, op.qualified
            else:  # the JWKS: every verifier's NATS allow-list names it
                assert op.subject in permissions_of(edge.source).publish, op.qualified
    elif edge.kind == "route":
        assert edge.source == "gateway"
        assert all(op.access is not Access.INTERNAL for op in ops(edge))
    elif edge.kind == "gateway-ingress":
        assert (edge.source, edge.target, edge.port) == (WORLD, "gateway", 8080)
    elif edge.kind == "scrape":
        assert edge.source in ("prometheus", "console")
        assert edge.target in PROCESSES or (edge.source, edge.target, edge.port) == ("prometheus", "nats", 8222)
    elif edge.kind == "nats":
        assert ((edge.target, edge.port) == ("nats", 4222) and edge.source in PROCESSES) or (
            (edge.source, edge.target, edge.port) == ("nats", "nats", 6222)
        )
    elif edge.kind == "dns":
        assert (edge.target, edge.port) == (DNS, 53)
    elif edge.kind == "database":
        assert edge.port == 5432
        assert edge.target in ("postgres", WORLD)
        assert edge.source in [*with_database(), "migrate"]
    elif edge.kind == "redis":
        assert (edge.source, edge.port) == ("gateway", 6379)
        assert edge.target in ("redis", WORLD)
    elif edge.kind == "telemetry":
        assert (edge.target, edge.port) in {("otel-collector", 4317), ("otel-collector", 4318)} or (
            (edge.source, edge.target, edge.port) == ("otel-collector", WORLD, None)
        )
    elif edge.kind == "dashboards":
        assert (edge.source, edge.target, edge.port) == ("grafana", "prometheus", 9090)
    else:
        assert edge.kind == "kubernetes-api"
        assert (edge.source, edge.target) == ("identity-issuer", WORLD)
        assert edge.port in (443, 6443)


def test_every_allow_list_entry_and_route_has_its_edge() -> None:
    """And back: a caller added to a contract opens its path (and a removed one closes it)."""
    have = {(e.source, e.target, e.kind) for e in edges()}
    for service in SERVICES:
        for op in operations_of(service):
            for caller in op.callers:
                assert (caller, service, "caller") in have, op.qualified
            if op.access is not Access.INTERNAL:
                assert ("gateway", service, "route") in have, op.qualified
    for process in PROCESSES:
        assert (process, "nats", "nats") in have
        assert ("prometheus", process, "scrape") in have
        assert ("console", process, "scrape") in have  # the console's other replicas included


def test_a_service_is_reachable_only_from_its_callers_the_gateway_and_the_scrapers(
    printed: list[dict[str, Any]],
) -> None:
    ingress, _ = rule_tuples(printed)
    assert {s for s, t, _, _ in ingress if t == "payments"} == {"orders", "gateway", "console", "prometheus"}
    assert {s for s, t, _, _ in ingress if t == "catalog"} == {
        "orders",
        "inventory",
        "gateway",
        "console",
        "prometheus",
    }
    assert {s for s, t, _, _ in ingress if t == "gateway"} == {WORLD}
    assert {(s, p) for s, t, p, _ in ingress if t == "nats"} == {
        *((process, 4222) for process in PROCESSES),
        ("nats", 6222),
    }
    assert {s for s, t, _, _ in ingress if t == "postgres"} == {*with_database(), "migrate"}


def test_kubernetes_validate_strict_accepts_the_policies_and_the_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    """At the Kubernetes version the manifests pin (tests/deploy/test_k8s_manifests.py)."""
    import functools

    import kubernetes_validate

    from meshop.deploy.secrets import generate

    from .test_k8s_manifests import KUBERNETES_VERSION

    read_once = functools.cache(kubernetes_validate.utils.schema_contents)  # 2 MB, else read per object
    monkeypatch.setattr(kubernetes_validate.utils, "schema_contents", read_once)
    for obj in [*policies(namespace="shop"), *generate(namespace="shop")]:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def test_the_manifests_policies_are_what_the_command_prints_today() -> None:
    """deploy/k8s/base/network-policies.yaml is regenerated after a contract changes: a
    caller added to an operation and not to the file would be refused in a cluster."""
    committed = Path(__file__).resolve().parents[2] / "deploy" / "k8s" / "base" / "network-policies.yaml"
    result = CliRunner().invoke(app, ["deploy", "network-policies"])
    assert result.exit_code == 0, result.output
    assert committed.read_text() == result.output, (
        "stale: run `meshop deploy network-policies > deploy/k8s/base/network-policies.yaml`"
    )
