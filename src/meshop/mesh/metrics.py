"""Prometheus metrics of one process, served at `/metrics`.

RED per route (requests, errors by status, duration) and per client call; requests in
flight; cache hits and misses; process CPU and memory; and, read at scrape time from the live objects: breaker
state per instance, each balancer's picks and efficiency E, retry-budget use, and what a
service registers (outbox backlog, consumer lag, sagas by state).

Names follow Prometheus conventions (`promtool check metrics` passes): base units
(seconds, bytes), `_total` for counters, one `meshop_` prefix, low-cardinality labels
(route templates and operation names, never raw paths or ids).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from meshop.mesh.client import ServiceClient

log = structlog.get_logger("meshop.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: The value `meshop_breaker_state` exports for each state (the console reads it back).
BREAKER_STATES = {"closed": 0, "half_open": 1, "open": 2}


class Metrics:
    """The metrics of one process (its own registry: no global state between tests)."""

    def __init__(self, service: str) -> None:
        self.service = service
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        self.requests = Counter(
            "meshop_http_requests",
            "Requests served, by route template, method and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "meshop_http_request_duration_seconds",
            "Time to serve a request, by route template",
            ["route", "method"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge("meshop_http_requests_in_flight", "Requests being served now", registry=self.registry)
        self.calls = Counter(
            "meshop_client_calls",
            "Calls to other services through the resilience chain, by outcome",
            ["target", "outcome"],
            registry=self.registry,
        )
        self.call_duration = Histogram(
            "meshop_client_call_duration_seconds",
            "Time a call to another service took, retries included",
            ["target"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.cache = Counter(
            "meshop_cache_requests",
            "Lookups in a response cache (the gateway's public GET cache), by result: hit or miss",
            ["result"],
            registry=self.registry,
        )
        self._cache_results = {"hit": self.cache.labels("hit"), "miss": self.cache.labels("miss")}
        self._refreshers: list[Callable[[], Awaitable[None]]] = []
        # labels() takes a lock and builds a key on every call: keep the children instead.
        self._served: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._called: dict[tuple[str, str], tuple[Any, Any]] = {}

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        children = self._served.get((route, method, status))
        if children is None:
            children = (self.requests.labels(route, method, str(status)), self.duration.labels(route, method))
            self._served[(route, method, status)] = children
        children[0].inc()
        children[1].observe(seconds)

    def observe_call(self, target: str, outcome: str, seconds: float) -> None:
        children = self._called.get((target, outcome))
        if children is None:
            children = (self.calls.labels(target, outcome), self.call_duration.labels(target))
            self._called[(target, outcome)] = children
        children[0].inc()
        children[1].observe(seconds)

    def observe_cache(self, result: str) -> None:
        """One cache lookup: "hit" or "miss" (the hit ratio is hits / (hits + misses))."""
        self._cache_results[result].inc()

    def watch_client(self, client: ServiceClient) -> None:
        """Export the client's breakers, balancers and retry budgets at each scrape."""
        self.registry.register(_ClientCollector(client))

    def gauge(self, name: str, documentation: str, labels: list[str] | None = None) -> Gauge:
        return Gauge(name, documentation, labels or [], registry=self.registry)

    def histogram(self, name: str, documentation: str, labels: list[str] | None = None) -> Histogram:
        return Histogram(name, documentation, labels or [], buckets=(*_BUCKETS, 30.0, 60.0), registry=self.registry)

    def on_scrape(self, refresh: Callable[[], Awaitable[None]]) -> None:
        """`refresh` updates gauges that need I/O (a database count) before each scrape."""
        self._refreshers.append(refresh)

    async def exposition(self) -> bytes:
        for refresh in self._refreshers:
            try:
                await refresh()
            except Exception as exc:  # a gauge may be stale for one scrape; the scrape still answers
                log.warning("metrics refresh failed", error=repr(exc))
        return generate_latest(self.registry)


class _ClientCollector(Collector):
    def __init__(self, client: ServiceClient) -> None:
        self._client = client

    def collect(self) -> Iterator[Metric]:
        breaker = GaugeMetricFamily(
            "meshop_breaker_state",
            "Circuit breaker per target instance: 0 closed, 1 half-open, 2 open",
            labels=["target", "instance"],
        )
        efficiency = GaugeMetricFamily(
            "meshop_balancer_efficiency",
            "Seed 001's E = 1 - (max - min) / avg over requests sent per instance (1 when none)",
            labels=["target", "window"],
        )
        picks = GaugeMetricFamily("meshop_balancer_picks", "Requests sent per instance", labels=["target", "instance"])
        retries = GaugeMetricFamily(
            "meshop_retry_budget_retries", "Retries spent within the budget's window", labels=["target"]
        )
        refused = GaugeMetricFamily(
            "meshop_retry_budget_refused", "Retries the budget refused since start", labels=["target"]
        )
        for service, target in self._client.targets().items():
            for instance, state in target.breakers.items():
                breaker.add_metric([service, instance], BREAKER_STATES[state.state.value])
            efficiency.add_metric([service, "total"], target.balancer.efficiency())
            efficiency.add_metric([service, "10s"], target.balancer.window_efficiency())
            for instance, count in target.balancer.sent().items():
                picks.add_metric([service, instance], count)
            retries.add_metric([service], target.budget.retries_in_window)
            refused.add_metric([service], target.budget.rejected)
        yield from (breaker, efficiency, picks, retries, refused)

    def describe(self) -> Iterator[Metric]:
        return iter(())
