"""Tail-based sampling: keep or drop a whole trace once all of its spans are in.

Seed 001's smart sampling, decided once per trace at the tail (where every span is seen):
1. keep every trace that holds an error;
2. keep slow traces: longer than the root route's threshold (`slow_ms`, else the default);
3. keep critical-path routes (checkout) at a higher rate (`critical`);
4. keep the rest at `base_rate` (10%).
The rate decisions hash the trace id (its low 64 bits, which W3C makes random), so every
place that applies the same policy to the same trace decides the same way — the same
thing the OpenTelemetry Collector's `probabilistic` policy does (deploy/otel-collector).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import msgspec
from msgspec import Meta

from meshop.mesh.service.settings import from_env
from meshop.mesh.telemetry.tracing import SpanRecord

Rate = Annotated[float, Meta(ge=0, le=1)]


class SamplingPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """What to keep; read from `MESHOP_TRACES_*` (`from_env`) or built in tests."""

    base_rate: Rate = 0.10
    slow_ms_default: Annotated[float, Meta(gt=0)] = 1000.0
    #: Per root route ("METHOD /template"): slower than this is slow.
    slow_ms: dict[str, float] = msgspec.field(
        # the order long poll waits for the saga on purpose: only a very long wait is slow
        default_factory=lambda: {"GET /api/orders/{id}": 15_000.0}
    )
    #: Critical-path routes and the rate they are kept at.
    critical: dict[str, Rate] = msgspec.field(default_factory=lambda: {"POST /api/orders": 0.5})
    #: A trace is decided once no span of it arrived for this long...
    decision_wait_s: Annotated[float, Meta(gt=0)] = 2.0
    #: ...or this long after its first span, whichever comes first.
    max_wait_s: Annotated[float, Meta(gt=0)] = 30.0

    @classmethod
    def from_env(cls) -> SamplingPolicy:
        return from_env(cls, "MESHOP_TRACES_")


def route_of(root: SpanRecord) -> str:
    """ "METHOD /template" of a root span (its name when it is not an HTTP span)."""
    method = root.attributes.get("http.request.method")
    template = root.attributes.get("http.route")
    return f"{method} {template}" if method and template else root.name


def root_of(spans: Sequence[SpanRecord]) -> SpanRecord:
    """The span without a parent among `spans` (else the earliest: the root is missing)."""
    ids = {s.span_id for s in spans}
    roots = [s for s in spans if s.parent_id is None or s.parent_id not in ids]
    return min(roots or spans, key=lambda s: s.start_ns)


def duration_ms(spans: Sequence[SpanRecord]) -> float:
    return (max(s.end_ns for s in spans) - min(s.start_ns for s in spans)) / 1e6


def hash_fraction(trace_id: str) -> float:
    """The trace id's random low 64 bits as a fraction in [0, 1)."""
    return int(trace_id[16:32], 16) / 2**64


def decide(policy: SamplingPolicy, spans: Sequence[SpanRecord]) -> str | None:
    """Why the trace is kept ("error", "slow", "critical", "base"), or None to drop it."""
    if any(s.error for s in spans):
        return "error"
    route = route_of(root_of(spans))
    if duration_ms(spans) > policy.slow_ms.get(route, policy.slow_ms_default):
        return "slow"
    fraction = hash_fraction(spans[0].trace_id)
    if route in policy.critical:
        return "critical" if fraction < policy.critical[route] else None
    return "base" if fraction < policy.base_rate else None
