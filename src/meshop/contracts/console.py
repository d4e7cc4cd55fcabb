"""The operations console: what the running shop looks like, and the traces it kept.

Every operation is for admins: the console's page (served by the gateway at `/console`)
logs in as an admin and polls these with its bearer token.
"""

from __future__ import annotations

import msgspec

from meshop.mesh.operation import Access, Operation
from meshop.mesh.spanrecord import AttributeValue


class InstanceState(msgspec.Struct, kw_only=True):
    """One registered process and what the console last saw of it."""

    service: str
    instance_id: str
    address: str
    pid: int
    version: str
    started_at: float
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
