"""The console's figures, computed from the scraper's rounds (pure: no I/O, no clock).

Totals are the counters at the last round; rates, error share, latency quantiles and
Little's law are over a window: the last round against the oldest one within
`window_s`, from counter deltas (a counter that went down belongs to a restarted
process: its new value is the delta, as Prometheus's `increase()` takes it).

The seeds' math is not written again here: E is what each balancer reports (computed by
`meshop.analysis.efficiency`), L = λW is `meshop.analysis.littles_law`, and checkout's
serial reliability is `meshop.analysis.live.checkout_reliability`.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from meshop.analysis import efficiency, littles_law
from meshop.analysis.live import checkout_reliability, efficiencies
from meshop.analysis.samples import IN_FLIGHT, REQUESTS_COUNT, REQUESTS_SECONDS, Samples, totals
from meshop.console.scraper import Round
from meshop.contracts import console as contract
from meshop.mesh.telemetry.metrics import BREAKER_STATES

_UNEVEN = (0.0, 0.0, 300.0)
EFFICIENCY_NOTE = (
    "E = 1 - (max - min) / avg over the requests a caller sent to each instance, computed as "
    "seed 001 writes it. The seed calls E = 0 the worst case, but the formula goes below 0 "
    f"for very uneven loads: loads {', '.join(f'{x:g}' for x in _UNEVEN)} give E = {efficiency(list(_UNEVEN)):g}."
)
_BREAKER_STATES = {float(value): state for state, value in BREAKER_STATES.items()}
_BREAKER_RANK = {"none": -1, **BREAKER_STATES}  # the worst state of a service's breakers


@dataclass
class _Served:
    """What one process served, from its /metrics."""

    requests: float = 0.0
    errors: float = 0.0
    count: float = 0.0
    seconds: float = 0.0
    in_flight: float = 0.0
    buckets: dict[float, float] = field(default_factory=lambda: defaultdict(float))

    @classmethod
    def of(cls, samples: Samples) -> _Served:
        out = cls()
        for name, labels, value in samples:
            if name == "meshop_http_requests_total":
                out.requests += value
                if labels.get("status", "").startswith("5"):
                    out.errors += value
            elif name == REQUESTS_COUNT:
                out.count += value
            elif name == REQUESTS_SECONDS:
                out.seconds += value
            elif name == "meshop_http_request_duration_seconds_bucket":
                out.buckets[float(labels["le"])] += value
            elif name == IN_FLIGHT:
                out.in_flight += value
        return out

    def since(self, earlier: _Served | None) -> _Served:
        """The increase of every counter since `earlier` (this process's round before)."""
        if earlier is None or self.count < earlier.count or self.requests < earlier.requests:
            return self  # restarted (or new) since: all of it happened within the window
        return _Served(
            requests=self.requests - earlier.requests,
            errors=self.errors - earlier.errors,
            count=self.count - earlier.count,
            seconds=self.seconds - earlier.seconds,
            in_flight=self.in_flight,
            buckets=defaultdict(float, {le: n - earlier.buckets.get(le, 0.0) for le, n in self.buckets.items()}),
        )

    def add(self, other: _Served) -> None:
        self.requests += other.requests
        self.errors += other.errors
        self.count += other.count
        self.seconds += other.seconds
        self.in_flight += other.in_flight
        for le, n in other.buckets.items():
            self.buckets[le] += n


#: Every sample the figures read: the scraper keeps no others (a process exposes ~200; the
#: client's latency buckets, ~40% of them, no figure uses).
READ = frozenset(
    {
        "meshop_http_requests_total",
        REQUESTS_COUNT,
        REQUESTS_SECONDS,
        "meshop_http_request_duration_seconds_bucket",
        IN_FLIGHT,
        "meshop_breaker_state",
        "meshop_balancer_efficiency",
        "meshop_balancer_picks",
        "meshop_client_calls_total",
        "meshop_sagas",
        "meshop_outbox_pending_events",
        "meshop_outbox_oldest_pending_age_seconds",
        "meshop_outbox_published_events",
        "meshop_consumer_pending_events",
        "meshop_consumer_unacknowledged_events",
        "meshop_consumer_applied_events",
        "meshop_consumer_dead_lettered_events",
    }
)


def quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """The q-quantile of a cumulative histogram, interpolated within its bucket (as
    Prometheus's `histogram_quantile`); None when it holds no observation."""
    ordered = sorted(buckets.items())
    if not ordered or ordered[-1][1] <= 0:
        return None
    rank = q * ordered[-1][1]
    lower, below = 0.0, 0.0
    for le, count in ordered:
        if count >= rank:
            if math.isinf(le):
                return lower  # above the highest finite bound: that bound is what is known
            if count == below:
                return le
            return lower + (le - lower) * (rank - below) / (count - below)
        lower, below = le, count
    return lower


def window_of(history: Sequence[Round], window_s: float) -> tuple[Round | None, list[Round]]:
    """The round the window starts at (None with fewer than two rounds) and every round in it."""
    if not history:
        return None, []
    last = history[-1]
    inside = [r for r in history if last.at - r.at <= window_s + 1e-9]
    first = inside[0] if inside[0] is not last else None
    return first, inside


def overview(history: Sequence[Round], *, window_s: float, traces: Mapping[str, int]) -> contract.Overview:
    """Every figure of the console's overview from the scraper's rounds."""
    if not history:
        return contract.Overview(
            scraped_at=None,
            window_s=0.0,
            services=[],
            instances=[],
            breakers=[],
            red=[],
            efficiency=[],
            efficiency_note=EFFICIENCY_NOTE,
            littles_law=[],
            reliability=_reliability({}),
            sagas=[],
            outbox=[],
            consumers=[],
            traces=dict(traces),
        )
    last = history[-1]
    first, inside = window_of(history, window_s)
    scraped = last.samples()
    breakers = _breakers(scraped)
    red, little = _served(last, first, inside)
    return contract.Overview(
        scraped_at=last.wall,
        window_s=round(last.at - first.at, 3) if first is not None else 0.0,
        services=sorted({s.instance.service for s in last.seen}),
        instances=_instances(last, breakers),
        breakers=breakers,
        red=red,
        efficiency=_efficiency(scraped),
        efficiency_note=EFFICIENCY_NOTE,
        littles_law=little,
        reliability=_reliability(scraped),
        sagas=_sagas(scraped),
        outbox=_outboxes(scraped),
        consumers=_consumers(scraped),
        traces=dict(traces),
    )


def _instances(last: Round, breakers: list[contract.Breaker]) -> list[contract.InstanceState]:
    worst: dict[tuple[str, str], str] = {}
    for b in breakers:
        key = (b.target, b.instance)
        if _BREAKER_RANK[b.state] > _BREAKER_RANK[worst.get(key, "none")]:
            worst[key] = b.state
    rows = [
        contract.InstanceState(
            service=s.instance.service,
            instance_id=s.instance.instance_id,
            address=f"{s.instance.address}:{s.instance.port}",
            pid=s.instance.pid,
            version=s.instance.version,
            started_at=s.instance.started_at,
            zone=s.instance.zone,
            health=s.health,
            scraped=s.samples is not None,
            breaker=worst.get((s.instance.service, s.instance.instance_id), "none"),
        )
        for s in last.seen
    ]
    return sorted(rows, key=lambda r: (r.service, r.instance_id))


def _breakers(scraped: Mapping[tuple[str, str], Samples]) -> list[contract.Breaker]:
    rows = [
        contract.Breaker(
            caller=f"{service}/{instance}",
            target=labels["target"],
            instance=labels["instance"],
            state=_BREAKER_STATES.get(value, str(value)),
        )
        for (service, instance), samples in scraped.items()
        for name, labels, value in samples
        if name == "meshop_breaker_state"
    ]
    return sorted(rows, key=lambda b: (b.target, b.instance, b.caller))


def _served(
    last: Round, first: Round | None, inside: Sequence[Round]
) -> tuple[list[contract.ServiceFigures], list[contract.LittlesLaw]]:
    elapsed = last.at - first.at if first is not None else 0.0
    before = {key: _Served.of(s) for key, s in first.samples().items()} if first is not None else {}
    overall: dict[str, _Served] = defaultdict(_Served)
    window: dict[str, _Served] = defaultdict(_Served)
    for (service, instance), samples in last.samples().items():
        now = _Served.of(samples)
        overall[service].add(now)
        window[service].add(now.since(before.get((service, instance))))
    # L observed: the mean over the window's rounds of each service's in-flight gauge.
    in_flight: dict[str, list[float]] = defaultdict(list)
    for r in inside:
        per_service: dict[str, float] = defaultdict(float)
        for (service, _), samples in r.samples().items():
            per_service[service] += totals(samples, IN_FLIGHT)[0]
        for service, value in per_service.items():
            in_flight[service].append(value)
    instances: dict[str, list[str]] = defaultdict(list)
    for s in last.seen:
        instances[s.instance.service].append(s.health)
    red, little = [], []
    for service in sorted(instances):
        total, delta = overall.get(service, _Served()), window.get(service, _Served())
        rate = delta.count / elapsed if elapsed > 0 else 0.0
        w = delta.seconds / delta.count if delta.count else 0.0
        p50, p99 = quantile(0.5, delta.buckets), quantile(0.99, delta.buckets)
        observed = in_flight.get(service, [])
        red.append(
            contract.ServiceFigures(
                service=service,
                instances=len(instances[service]),
                ready=sum(1 for h in instances[service] if h == "ready"),
                requests_total=total.requests,
                errors_total=total.errors,
                rate_rps=round(delta.requests / elapsed, 3) if elapsed > 0 else 0.0,
                error_rate=delta.errors / delta.requests if delta.requests else None,
                latency_mean_ms=round(w * 1000, 3) if delta.count else None,
                latency_p50_ms=round(p50 * 1000, 3) if p50 is not None else None,
                latency_p99_ms=round(p99 * 1000, 3) if p99 is not None else None,
                in_flight=total.in_flight,
            )
        )
        little.append(
            contract.LittlesLaw(
                service=service,
                arrival_rate=round(rate, 3),
                time_in_system_ms=round(w * 1000, 3),
                predicted_l=round(littles_law(arrival_rate=rate, time_in_system=w), 4),
                observed_l=round(sum(observed) / len(observed), 4) if observed else 0.0,
            )
        )
    return red, little


def _efficiency(scraped: Mapping[tuple[str, str], Samples]) -> list[contract.Efficiency]:
    recent = {
        (f"{service}/{instance}", labels["target"]): value
        for (service, instance), samples in scraped.items()
        for name, labels, value in samples
        if name == "meshop_balancer_efficiency" and labels.get("window") == "10s"
    }
    return [
        contract.Efficiency(
            caller=row.caller,
            target=row.target,
            efficiency=row.efficiency,
            recent=recent.get((row.caller, row.target)),
            sent=row.sent,
        )
        for row in efficiencies(dict(scraped))
    ]


def _reliability(scraped: Mapping[tuple[str, str], Samples]) -> contract.Reliability:
    rows, product = checkout_reliability(dict(scraped))
    steps = [contract.Step(step=r.step, calls=r.calls, succeeded=r.succeeded, reliability=r.reliability) for r in rows]
    return contract.Reliability(steps=steps, r=product)


def _sagas(scraped: Mapping[tuple[str, str], Samples]) -> list[contract.SagaCount]:
    # Every replica of orders counts the same table: the figure is one of them, not a sum.
    counts: dict[tuple[str, str], float] = {}
    for samples in scraped.values():
        for name, labels, value in samples:
            if name == "meshop_sagas":
                key = (labels["saga"], labels["state"])
                counts[key] = max(counts.get(key, 0.0), value)
    return [contract.SagaCount(saga=saga, state=state, count=n) for (saga, state), n in sorted(counts.items())]


def _outboxes(scraped: Mapping[tuple[str, str], Samples]) -> list[contract.Outbox]:
    # The backlog is the service's table (the same for every replica); published is per process.
    found: dict[str, contract.Outbox] = {}
    for (service, _), samples in scraped.items():
        values = {n: v for n, _, v in samples if n.startswith("meshop_outbox_")}
        if not values:
            continue
        row = found.setdefault(
            service, contract.Outbox(service=service, pending=0.0, oldest_pending_age_s=0.0, published=0.0)
        )
        row.pending = max(row.pending, values.get("meshop_outbox_pending_events", 0.0))
        row.oldest_pending_age_s = max(
            row.oldest_pending_age_s, values.get("meshop_outbox_oldest_pending_age_seconds", 0.0)
        )
        row.published += values.get("meshop_outbox_published_events", 0.0)
    return [found[s] for s in sorted(found)]


_CONSUMER_FIELDS = {
    "meshop_consumer_pending_events": "pending",
    "meshop_consumer_unacknowledged_events": "unacknowledged",
    "meshop_consumer_applied_events": "applied",
    "meshop_consumer_dead_lettered_events": "dead_lettered",
}


def _consumers(scraped: Mapping[tuple[str, str], Samples]) -> list[contract.ConsumerLag]:
    # pending and unacknowledged are the durable consumer's (shared by replicas); the others per process.
    found: dict[str, contract.ConsumerLag] = {}
    for (service, _), samples in scraped.items():
        for name, labels, value in samples:
            what = _CONSUMER_FIELDS.get(name)
            if what is None:
                continue
            consumer = labels["consumer"]
            row = found.setdefault(
                consumer,
                contract.ConsumerLag(
                    service=service, consumer=consumer, pending=0.0, unacknowledged=0.0, applied=0.0, dead_lettered=0.0
                ),
            )
            if what in ("pending", "unacknowledged"):
                setattr(row, what, max(getattr(row, what), value))
            else:
                setattr(row, what, getattr(row, what) + value)
    return [found[c] for c in sorted(found)]
