"""The service client's state as Prometheus metrics, read at each scrape."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from meshop.mesh.client.client import ServiceClient
from meshop.mesh.telemetry.metrics import BREAKER_STATES


class ClientMetrics(Collector):
    """Exports a client's breakers, balancers, retry budgets and zone picks at each scrape.

    `metrics.registry.register(ClientMetrics(client))`.
    """

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
        zones = CounterMetricFamily(
            "meshop_client_zone_picks",
            "Instances picked in the caller's zone (local) and elsewhere (remote), zone-aware callers only",
            labels=["target", "locality"],
        )
        zone_aware = self._client.locality is not None
        for service, target in self._client.targets().items():
            for instance, state in target.breakers.items():
                breaker.add_metric([service, instance], BREAKER_STATES[state.state.value])
            efficiency.add_metric([service, "total"], target.balancer.efficiency())
            efficiency.add_metric([service, "10s"], target.balancer.window_efficiency())
            for instance, count in target.balancer.sent().items():
                picks.add_metric([service, instance], count)
            retries.add_metric([service], target.budget.retries_in_window)
            refused.add_metric([service], target.budget.rejected)
            if zone_aware:
                zones.add_metric([service, "local"], target.local_picks)
                zones.add_metric([service, "remote"], target.remote_picks)
        yield from (breaker, efficiency, picks, retries, refused, zones)

    def describe(self) -> Iterator[Metric]:
        return iter(())
