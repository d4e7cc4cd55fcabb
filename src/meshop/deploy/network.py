"""NetworkPolicies generated from who may call whom (`meshop deploy network-policies`).

Every allowed connection is an `Edge` with the reason it exists, derived from what already
decides it elsewhere: an INTERNAL operation's `callers` (the contracts' allow-lists, which
service identity enforces), the operations the gateway routes, the users service's JWKS
that every verifier reads, the scrapers (Prometheus and the console), NATS, and the
infrastructure each process is configured to reach (PostgreSQL, Redis, the OTel
Collector, DNS). `policies()` turns the edges into a default-deny policy and one policy per
workload, so a caller added to a contract opens exactly that path and nothing else.

Workloads are selected by `app.kubernetes.io/name` (the manifests' label): each process by
its name, and `nats`, `postgres`, `redis`, `otel-collector`, `prometheus`, `grafana`, the
`migrate` Job and the `identity-issuer` CronJob. PostgreSQL and Redis are
reachable both in the cluster and outside it (an `ipBlock`, for managed ones).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Literal

from meshop.contracts import SERVICES, operations_of, users
from meshop.mesh.operation import Access
from meshop.runtime.nats_users import VERIFIES
from meshop.services import PROCESSES

__all__ = ["DNS", "LABEL", "WORLD", "Edge", "edges", "policies"]

LABEL = "app.kubernetes.io/name"
#: Every process listens on this port in its own pod (MESHOP_PORT).
SERVICE_PORT = 8080
NATS_CLIENT_PORT, NATS_ROUTE_PORT, NATS_MONITOR_PORT = 4222, 6222, 8222
POSTGRES_PORT, REDIS_PORT, PROMETHEUS_PORT = 5432, 6379, 9090
OTLP_PORTS = (4317, 4318)  # gRPC, HTTP
KUBERNETES_API_PORTS = (443, 6443)
#: Peers that are not a workload of the shop: anything (an ipBlock of every address) and
#: the cluster's DNS (kube-dns in kube-system).
WORLD = "world"
DNS = "kube-dns"
NATS, POSTGRES, REDIS, COLLECTOR = "nats", "postgres", "redis", "otel-collector"
PROMETHEUS, GRAFANA = "prometheus", "grafana"
MIGRATE, ISSUER = "migrate", "identity-issuer"  # the Job and the CronJob (deploy/k8s/base)
WORKLOADS = (*PROCESSES, NATS, POSTGRES, REDIS, COLLECTOR, PROMETHEUS, GRAFANA, MIGRATE, ISSUER)

Kind = Literal[
    "gateway-ingress",  # anyone may reach the gateway
    "route",  # the gateway routes a PUBLIC/USER/ADMIN operation to its service
    "caller",  # an operation's allow-list (INTERNAL `callers`, or the JWKS every verifier reads)
    "scrape",  # Prometheus and the console read /ready and /metrics; Prometheus NATS's monitoring
    "nats",  # meshop pods to NATS, and NATS's cluster routes
    "dns",
    "database",
    "redis",
    "telemetry",  # spans to the OTel Collector, and the Collector's exports
    "dashboards",  # Grafana queries Prometheus
    "kubernetes-api",  # the identity issuer applies the meshop-identity Secret
]


@dataclass(frozen=True, order=True)
class Edge:
    """One allowed connection: `source` may open `port`/`protocol` on `target`, because `why`."""

    source: str
    target: str
    port: int | None  # None: any port (only to WORLD)
    kind: Kind
    why: str
    protocol: str = "TCP"


def _with_database() -> list[str]:
    from meshop.runtime.migrations import with_database

    return with_database()


def edges(*, port: int = SERVICE_PORT) -> list[Edge]:
    """Every connection the shop needs, each with its reason; everything else is denied."""
    found: list[Edge] = [Edge(WORLD, "gateway", port, "gateway-ingress", "the gateway is the shop's one public door")]
    for service in SERVICES:
        ops = operations_of(service)
        routed = [op.name for op in ops if op.access is not Access.INTERNAL]
        if routed:
            found.append(Edge("gateway", service, port, "route", f"{service}: {', '.join(routed)}"))
        callers: dict[str, list[str]] = defaultdict(list)
        for op in ops:
            for caller in op.callers:
                callers[caller].append(op.name)
        for caller, names in callers.items():
            found.append(Edge(caller, service, port, "caller", f"{service}: {', '.join(names)}"))
    for verifier in sorted(VERIFIES):
        found.append(Edge(verifier, "users", port, "caller", f"users: {users.JWKS.name}"))
    for process in PROCESSES:
        for scraper in (PROMETHEUS, "console"):  # the console scrapes its other replicas too
            found.append(Edge(scraper, process, port, "scrape", "/ready and /metrics"))
        found.append(Edge(process, NATS, NATS_CLIENT_PORT, "nats", "registry, events, RPC, spans"))
        found.append(Edge(process, DNS, 53, "dns", "names: nats, postgres, redis, the collector", "UDP"))
        found.append(Edge(process, DNS, 53, "dns", "names: nats, postgres, redis, the collector", "TCP"))
        for otlp in OTLP_PORTS:
            found.append(Edge(process, COLLECTOR, otlp, "telemetry", "spans over OTLP"))
    for client in (*_with_database(), MIGRATE):
        found.append(Edge(client, POSTGRES, POSTGRES_PORT, "database", "its database (in-cluster)"))
        found.append(Edge(client, WORLD, POSTGRES_PORT, "database", "its database (a managed server)"))
    found.append(Edge("gateway", REDIS, REDIS_PORT, "redis", "shared rate limits (in-cluster)"))
    found.append(Edge("gateway", WORLD, REDIS_PORT, "redis", "shared rate limits (a managed server)"))
    found.append(Edge(NATS, NATS, NATS_ROUTE_PORT, "nats", "JetStream cluster routes"))
    found.append(Edge(PROMETHEUS, NATS, NATS_MONITOR_PORT, "scrape", "NATS monitoring"))
    found.append(Edge(GRAFANA, PROMETHEUS, PROMETHEUS_PORT, "dashboards", "the meshop dashboard's queries"))
    found.append(Edge(COLLECTOR, WORLD, None, "telemetry", "exports to the tracing backend"))
    for api_port in KUBERNETES_API_PORTS:
        found.append(Edge(ISSUER, WORLD, api_port, "kubernetes-api", "applies the meshop-identity Secret"))
    for workload in (NATS, MIGRATE, PROMETHEUS, GRAFANA, COLLECTOR):
        for protocol in ("UDP", "TCP"):
            found.append(Edge(workload, DNS, 53, "dns", "names of its peers", protocol))
    return sorted(set(found))


def _peer(name: str) -> dict[str, Any]:
    if name == WORLD:
        return {"ipBlock": {"cidr": "0.0.0.0/0"}}
    if name == DNS:
        return {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
            "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
        }
    return {"podSelector": {"matchLabels": {LABEL: name}}}


def _rules(pairs: list[tuple[str, Edge]], direction: str) -> list[dict[str, Any]]:
    """One rule per port: the peers that may use it (`from` for ingress, `to` for egress)."""
    peers: dict[tuple[int | None, str], list[str]] = defaultdict(list)
    for peer, edge in pairs:
        if peer not in peers[(edge.port, edge.protocol)]:
            peers[(edge.port, edge.protocol)].append(peer)
    rules = []
    for (port, protocol), names in sorted(peers.items(), key=lambda item: (item[0][0] or 0, item[0][1])):
        rule: dict[str, Any] = {}
        if not (direction == "from" and WORLD in names):  # ingress from anywhere: no `from` at all
            rule[direction] = [_peer(name) for name in sorted(names)]
        if port is not None:
            rule["ports"] = [{"port": port, "protocol": protocol}]
        rules.append(rule)
    return rules


def policies(*, namespace: str | None = None, port: int = SERVICE_PORT) -> list[dict[str, Any]]:
    """A default-deny NetworkPolicy and one per workload allowing exactly `edges()`."""

    def metadata(name: str) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": name, "labels": {"app.kubernetes.io/part-of": "meshop"}}
        if namespace is not None:
            meta["namespace"] = namespace
        return meta

    allowed = edges(port=port)
    out: list[dict[str, Any]] = [
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": metadata("meshop-default-deny"),
            "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]},
        }
    ]
    for workload in WORKLOADS:
        ingress = _rules([(e.source, e) for e in allowed if e.target == workload], "from")
        egress = _rules([(e.target, e) for e in allowed if e.source == workload], "to")
        spec: dict[str, Any] = {"podSelector": {"matchLabels": {LABEL: workload}}, "policyTypes": ["Ingress", "Egress"]}
        if ingress:
            spec["ingress"] = ingress
        if egress:
            spec["egress"] = egress
        name = f"meshop-{workload}"
        out.append(
            {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": metadata(name), "spec": spec}
        )
    return out
