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

from bisect import bisect_left
from collections.abc import Awaitable, Callable, Iterator

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

log = structlog.get_logger("meshop.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: `tuple[float, ...]`, not the inferred fixed-length tuple: mypyc keeps one of those unboxed
#: and builds a new tuple of 14 floats at every use (decision 0014).
_BUCKETS: tuple[float, ...] = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: The value `meshop_breaker_state` exports for each state (the console reads it back).
BREAKER_STATES = {"closed": 0, "half_open": 1, "open": 2}


class Metrics:
    """The metrics of one process (its own registry: no global state between tests)."""

    def __init__(self, service: str) -> None:
        self.service = service
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        # RED per route and per call: counted in plain lists, exported at scrape time (_Red).
        # prometheus_client's labelled children take a lock per update, ~8 per proxied request.
        self._served = _Red(
            "meshop_http_requests",
            "Requests served, by route template, method and status",
            "meshop_http_request_duration_seconds",
            "Time to serve a request, by route template",
            ("route", "method"),
        )
        self._called = _Red(
            "meshop_client_calls",
            "Calls to other services through the resilience chain, by outcome",
            "meshop_client_call_duration_seconds",
            "Time a call to another service took, retries included",
            ("target",),
            outcome="outcome",
        )
        self.registry.register(self._served)
        self.registry.register(self._called)
        #: Requests being served now: a plain number the gauge reads at scrape time.
        self.in_flight = 0
        Gauge("meshop_http_requests_in_flight", "Requests being served now", registry=self.registry).set_function(
            lambda: self.in_flight
        )
        self.cache = Counter(
            "meshop_cache_requests",
            "Lookups in a response cache (the gateway's public GET cache), by result: hit or miss",
            ["result"],
            registry=self.registry,
        )
        self._cache_results = {"hit": self.cache.labels("hit"), "miss": self.cache.labels("miss")}
        self._refreshers: list[Callable[[], Awaitable[None]]] = []
        # Caller labels are bounded: a verified service name (certified by the root), or "none".
        self.refusals = Counter(
            "meshop_call_refusals",
            "Calls to INTERNAL operations refused, by operation, outcome (unauthenticated: 401, "
            "forbidden: 403) and calling service",
            ["operation", "outcome", "caller"],
            registry=self.registry,
        )

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        """One request served (from the event loop's thread, as every update here)."""
        self._served.observe((route, method), status, seconds)

    def observe_call(self, target: str, outcome: str, seconds: float) -> None:
        self._called.observe((target,), outcome, seconds)

    def observe_refusal(self, operation: str, outcome: str, caller: str) -> None:
        """One call to an INTERNAL operation refused (401 or 403)."""
        self.refusals.labels(operation, outcome, caller).inc()

    def observe_cache(self, result: str) -> None:
        """One cache lookup: "hit" or "miss" (the hit ratio is hits / (hits + misses))."""
        self._cache_results[result].inc()

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


class _Series:
    """One label set's counts: requests by status (or outcome), and a duration histogram."""

    __slots__ = ("buckets", "by_status", "sum")

    def __init__(self) -> None:
        self.by_status: dict[int | str, int] = {}
        #: Per bucket, not cumulative; the last is +Inf (the count is the cumulative +Inf bucket).
        self.buckets = [0] * (len(_BUCKETS) + 1)
        self.sum = 0.0


class _Red(Collector):
    """A counter by (labels, status) and a duration histogram by labels, exported at scrape time.

    Updated only from the process's event-loop thread: plain integers, no lock. The series
    are the ones prometheus_client's `Counter` and `Histogram` would export (the counter's
    `_total`, the histogram's cumulative `_bucket`, `_count` and `_sum`).
    """

    def __init__(
        self,
        counter: str,
        counter_help: str,
        histogram: str,
        histogram_help: str,
        labels: tuple[str, ...],
        *,
        outcome: str = "status",
    ) -> None:
        self._names = (counter, counter_help, histogram, histogram_help)
        self._labels = labels
        self._outcome = outcome
        self._series: dict[tuple[str, ...], _Series] = {}

    def observe(self, labels: tuple[str, ...], status: int | str, seconds: float) -> None:
        series = self._series.get(labels)
        if series is None:
            series = self._series[labels] = _Series()
        by_status = series.by_status
        by_status[status] = by_status.get(status, 0) + 1
        series.buckets[bisect_left(_BUCKETS, seconds)] += 1
        series.sum += seconds

    def collect(self) -> Iterator[Metric]:
        counter, counter_help, histogram, histogram_help = self._names
        counts = CounterMetricFamily(counter, counter_help, labels=[*self._labels, self._outcome])
        durations = HistogramMetricFamily(histogram, histogram_help, labels=list(self._labels))
        for labels, series in list(self._series.items()):
            for status, n in list(series.by_status.items()):
                counts.add_metric([*labels, str(status)], n)
            cumulative, total = [], 0
            for bound, n in zip([*map(str, _BUCKETS), "+Inf"], series.buckets, strict=True):
                total += n
                cumulative.append((bound, total))
            durations.add_metric(list(labels), cumulative, series.sum)
        yield counts
        yield durations

    def describe(self) -> Iterator[Metric]:
        return iter(())
