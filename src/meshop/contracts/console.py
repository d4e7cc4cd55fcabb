"""The operations console: what the running shop looks like, and the traces it kept.

Every operation is for admins: the console's page (served by the gateway at `/console`)
logs in as an admin and polls these with its bearer token.
"""

from __future__ import annotations

from typing import Any

import msgspec

from meshop.mesh import Access, AttributeValue, Example, Operation


class InstanceState(msgspec.Struct, kw_only=True):
    """One registered process and what the console last saw of it."""

    service: str
    instance_id: str
    address: str
    pid: int
    version: str
    started_at: float
    #: Where it runs (MESHOP_ZONE; "local" on one machine).
    zone: str = "local"
    #: "ready", "not ready (503)" or "unreachable" (its /ready, at the last scrape).
    health: str
    #: Its /metrics answered at the last scrape.
    scraped: bool
    #: The worst state any caller's breaker holds for this instance: closed, half_open,
    #: open, or "none" when nobody calls it.
    breaker: str


class Breaker(msgspec.Struct, kw_only=True):
    """One caller's circuit breaker for one target instance."""

    caller: str
    target: str
    instance: str
    state: str


class ServiceFigures(msgspec.Struct, kw_only=True):
    """RED figures of one service, summed over its instances.

    Totals are the counters' values at the last scrape (since each process started);
    rates, error share and latencies are over the overview's window.
    """

    service: str
    instances: int
    ready: int
    requests_total: float
    errors_total: float
    rate_rps: float
    error_rate: float | None
    latency_mean_ms: float | None
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    in_flight: float


class Efficiency(msgspec.Struct, kw_only=True):
    """Seed 001's balancer efficiency E of one caller process toward one target service."""

    caller: str
    target: str
    #: Over every request the caller sent since it started.
    efficiency: float
    #: Over the balancer's last 10 s.
    recent: float | None
    #: Requests sent to each instance of the target.
    sent: dict[str, float]


class LittlesLaw(msgspec.Struct, kw_only=True):
    """L = λW for one service over the window, next to the mean of its in-flight gauge."""

    service: str
    arrival_rate: float
    time_in_system_ms: float
    predicted_l: float
    observed_l: float


class Step(msgspec.Struct, kw_only=True):
    """One checkout step's calls from orders (a 4xx is the participant answering: a success)."""

    step: str
    calls: float
    succeeded: float
    reliability: float


class Reliability(msgspec.Struct, kw_only=True):
    """The checkout path's serial reliability R = Π R(step)."""

    steps: list[Step]
    r: float


class SagaCount(msgspec.Struct, kw_only=True):
    saga: str
    state: str
    count: float


class Outbox(msgspec.Struct, kw_only=True):
    service: str
    pending: float
    oldest_pending_age_s: float
    published: float


class ConsumerLag(msgspec.Struct, kw_only=True):
    service: str
    consumer: str
    pending: float
    unacknowledged: float
    applied: float
    dead_lettered: float


class Overview(msgspec.Struct, kw_only=True):
    """Everything the console's page shows, as of the console's last scrape."""

    #: Wall-clock time of the last scrape (None before the first one).
    scraped_at: float | None
    #: Seconds between the two scrapes the rates come from (0 before a second scrape).
    window_s: float
    services: list[str]
    instances: list[InstanceState]
    breakers: list[Breaker]
    red: list[ServiceFigures]
    efficiency: list[Efficiency]
    #: Why an E below 0 can appear although the seed calls 0 the worst case.
    efficiency_note: str
    littles_law: list[LittlesLaw]
    reliability: Reliability
    sagas: list[SagaCount]
    outbox: list[Outbox]
    consumers: list[ConsumerLag]
    #: The trace store's counters (spans seen, traces kept, dropped, pending...).
    traces: dict[str, int]


class SpanEvent(msgspec.Struct, kw_only=True):
    name: str
    time_ms: float
    attributes: dict[str, AttributeValue]


class Span(msgspec.Struct, kw_only=True):
    service: str
    name: str
    #: From the trace's start.
    start_ms: float
    duration_ms: float
    status: str
    kind: str
    span_id: str
    parent_id: str | None
    attributes: dict[str, AttributeValue]
    events: list[SpanEvent]


class Trace(msgspec.Struct, kw_only=True):
    trace_id: str
    duration_ms: float
    #: Wall-clock time of its first span.
    started_at: float
    root: str
    services: list[str]
    status: str
    kept_because: str
    order_id: str | None
    spans: list[Span]


class TracePage(msgspec.Struct, kw_only=True):
    items: list[Trace]


OVERVIEW: Operation[None, Overview] = Operation(
    "console",
    "overview",
    "GET",
    "/overview",
    None,
    Overview,
    Access.ADMIN,
    idempotent=True,
    summary="Topology, RED figures, the seeds' math, sagas, outboxes and consumers, live",
)
TRACES: Operation[None, TracePage] = Operation(
    "console",
    "traces",
    "GET",
    "/traces",
    None,
    TracePage,
    Access.ADMIN,
    idempotent=True,
    errors=(422,),
    summary="Kept traces, newest first (order_id, errors=true, slow=true, limit)",
)
TRACE: Operation[None, Trace] = Operation(
    "console",
    "trace",
    "GET",
    "/traces/{trace_id}",
    None,
    Trace,
    Access.ADMIN,
    idempotent=True,
    summary="One kept trace and its spans",
)

# What /docs and /openapi.json show for each operation (every one validates: tests/gateway).
_TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
_TRACE = Trace(
    trace_id=_TRACE_ID,
    duration_ms=3.9,
    started_at=1_796_550_060.12,
    root="GET /api/catalog/products/{id}",
    services=["gateway", "catalog"],
    status="ok",
    kept_because="slow",
    order_id=None,
    spans=[
        Span(
            service="gateway",
            name="GET /api/catalog/products/{id}",
            start_ms=0.0,
            duration_ms=3.9,
            status="ok",
            kind="server",
            span_id="00f067aa0ba902b7",
            parent_id=None,
            attributes={"http.response.status_code": 200},
            events=[SpanEvent(name="try", time_ms=0.2, attributes={"instance": "catalog-1", "result": 200})],
        ),
        Span(
            service="catalog",
            name="GET /products/{id}",
            start_ms=0.6,
            duration_ms=2.8,
            status="ok",
            kind="server",
            span_id="b7ad6b7169203331",
            parent_id="00f067aa0ba902b7",
            attributes={"meshop.operation": "catalog.get"},
            events=[],
        ),
    ],
)
EXAMPLES: dict[Operation[Any, Any], Example] = {
    OVERVIEW: Example(
        response=Overview(
            scraped_at=1_796_550_065.0,
            window_s=5.0,
            services=["catalog"],
            instances=[
                InstanceState(
                    service="catalog",
                    instance_id="catalog-1",
                    address="127.0.0.1:41237",
                    pid=4242,
                    version="0.1.0",
                    started_at=1_796_549_000.0,
                    health="ready",
                    scraped=True,
                    breaker="closed",
                )
            ],
            breakers=[Breaker(caller="gateway", target="catalog", instance="catalog-1", state="closed")],
            red=[
                ServiceFigures(
                    service="catalog",
                    instances=1,
                    ready=1,
                    requests_total=1200.0,
                    errors_total=0.0,
                    rate_rps=40.0,
                    error_rate=0.0,
                    latency_mean_ms=2.1,
                    latency_p50_ms=1.8,
                    latency_p99_ms=6.5,
                    in_flight=0.0,
                )
            ],
            efficiency=[
                Efficiency(caller="gateway", target="catalog", efficiency=1.0, recent=1.0, sent={"catalog-1": 1200.0})
            ],
            efficiency_note="E = 1 - (max - min) / avg over the requests a caller sent to each instance",
            littles_law=[
                LittlesLaw(
                    service="catalog", arrival_rate=40.0, time_in_system_ms=2.1, predicted_l=0.084, observed_l=0.1
                )
            ],
            reliability=Reliability(
                steps=[Step(step="inventory.reserve", calls=10.0, succeeded=10.0, reliability=1.0)], r=1.0
            ),
            sagas=[SagaCount(saga="checkout", state="COMPLETED", count=10.0)],
            outbox=[Outbox(service="catalog", pending=0.0, oldest_pending_age_s=0.0, published=3.0)],
            consumers=[
                ConsumerLag(
                    service="users",
                    consumer="order-stats",
                    pending=0.0,
                    unacknowledged=0.0,
                    applied=10.0,
                    dead_lettered=0.0,
                )
            ],
            traces={"spans": 240, "decided": 60, "slow": 12, "dropped": 0, "pending": 1, "kept": 12},
        )
    ),
    TRACES: Example(response=TracePage(items=[_TRACE])),
    TRACE: Example(response=_TRACE, params={"trace_id": _TRACE_ID}),
}
