"""Capacity planning from measured traffic: how many replicas each service needs for N req/s.

The model (`meshop plan --rps N`), per service, from two scrapes of every instance's
`/metrics` a window apart (or from a measurements file):

- λ, the rate each instance serves: Δ requests (`meshop_http_request_duration_seconds_count`)
  over the window, divided by its instances;
- W, the mean time in service: Δ sum / Δ count of the same histogram;
- ρ, CPU utilisation of an instance: Δ `process_cpu_seconds_total` over the window (a
  fraction of one core: one Python process serves from one event loop, so one core is what
  an instance has);
- μ = λ / ρ, the capacity of one instance: requests per second at 100% of one core (the
  same as Δ requests / Δ CPU seconds). The CPU an idle instance spends (heartbeats, relay,
  consumers) is counted as the requests' cost, so μ errs low: a plan errs towards more
  replicas, and a window with more traffic measures μ better;
- s = λ_service / λ_entry, its share: requests it serves per request at the entry (the
  gateway). Fan-out is in it: checkout calls inventory twice per order. The plan assumes the
  measured mix of traffic is the one that grows to N, and every answer is in that mix (a
  gateway answering 429 or from its cache serves fast, cheap requests no service sees):
  measure under traffic like the one to plan for;
- replicas = max(1, ⌈s·N / (μ·(1 − headroom))⌉): every instance planned at no more than
  (1 − headroom) of its capacity (headroom 0.3 by default: each instance at ≤ 70%);
- L = λ'·W', Little's law: the requests each instance holds at once at its planned rate
  λ' = s·N / replicas, which is what its bulkheads, connection pools and database pool must
  allow. W' is W with the CPU part's queueing redone at the planned utilisation ρ' = λ'/μ:
  an event loop interleaving requests is close to a processor-sharing server, whose mean
  time for a request needing S seconds of CPU is S / (1 − ρ) whatever the distribution
  (M/G/1-PS). With S = 1/μ, the measured W = D + S/(1 − ρ) gives D, the time spent waiting
  on others (downstream calls, the database), kept as measured: W' = D + S/(1 − ρ').

A service that served nothing in the window has no λ, W or μ: it is reported as "no traffic
measured", with no replica count made up for it. Without traffic at the entry there are no
shares, so no plan at all.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from meshop.analysis.samples import CPU_SECONDS, REQUESTS_COUNT, REQUESTS_SECONDS, Sample, totals

__all__ = [
    "DEFAULT_HEADROOM",
    "Measurement",
    "NoTrafficError",
    "Plan",
    "ServicePlan",
    "measure",
    "measurements_from_json",
    "measurements_to_json",
    "plan",
    "processor_sharing_time",
    "replicas_for",
]

DEFAULT_HEADROOM = 0.3


@dataclass(frozen=True, slots=True)
class Measurement:
    """What one service's instances did over a window, summed over them."""

    service: str
    instances: int
    window_s: float
    #: Requests served in the window.
    requests: float
    #: Σ of those requests' times in service, seconds.
    busy_s: float
    #: CPU seconds the instances used in the window.
    cpu_s: float

    def __post_init__(self) -> None:
        if self.instances < 1 or self.window_s <= 0:
            raise ValueError(f"{self.service}: a measurement needs at least one instance and a window > 0")
        if min(self.requests, self.busy_s, self.cpu_s) < 0:
            raise ValueError(f"{self.service}: requests, busy_s and cpu_s cannot be negative")

    @property
    def rate(self) -> float:
        """λ of the whole service, requests/s."""
        return self.requests / self.window_s

    @property
    def per_instance_rate(self) -> float:
        return self.rate / self.instances

    @property
    def time_in_service_s(self) -> float | None:
        """W, the mean time a request spends in the service (None without requests)."""
        return self.busy_s / self.requests if self.requests else None

    @property
    def utilisation(self) -> float:
        """ρ: the CPU an instance used, as a fraction of one core."""
        return self.cpu_s / (self.window_s * self.instances)

    @property
    def capacity(self) -> float | None:
        """μ: requests/s one instance serves at 100% of a core (None unless both were measured)."""
        return self.requests / self.cpu_s if self.requests and self.cpu_s else None


class NoTrafficError(ValueError):
    """The entry served no request in the window: there are no shares to scale, so no plan."""

    def __init__(self, entry: str, measurements: Sequence[Measurement]) -> None:
        self.entry = entry
        self.measurements = list(measurements)
        window = f"{measurements[0].window_s:.1f} s" if measurements else "the window"
        instances = sum(m.instances for m in measurements)
        served = sum(m.requests for m in measurements)
        super().__init__(
            f"no traffic measured at {entry} in {window} ({instances} instances of {len(measurements)} services "
            f"measured; they served {served:g} requests in all). A plan scales the measured traffic, "
            "so put load on the shop while it measures"
        )


@dataclass(frozen=True, slots=True)
class ServicePlan:
    """One service's plan; the figures a window without traffic cannot give are None."""

    service: str
    instances_now: int
    per_instance_rate: float
    utilisation: float
    capacity: float | None
    time_in_service_s: float | None
    share: float
    demand_rps: float
    replicas: int | None = None
    planned_rate: float | None = None
    planned_utilisation: float | None = None
    planned_time_s: float | None = None
    #: L = λ'·W': the requests one instance holds at once at its planned rate.
    concurrency: float | None = None
    note: str = ""


@dataclass(frozen=True, slots=True)
class Plan:
    rps: float
    headroom: float
    entry: str
    entry_rate: float
    window_s: float
    services: list[ServicePlan]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def replicas_for(demand_rps: float, capacity: float, headroom: float = DEFAULT_HEADROOM) -> int:
    """⌈demand / (capacity·(1 − headroom))⌉ instances, at least one."""
    if demand_rps < 0 or capacity <= 0:
        raise ValueError("demand cannot be negative and capacity must be positive")
    _check_headroom(headroom)
    return max(1, math.ceil(demand_rps / (capacity * (1 - headroom))))


def processor_sharing_time(cpu_s: float, utilisation: float) -> float:
    """Mean time in an M/G/1 processor-sharing server for a request needing `cpu_s`: S / (1 − ρ)."""
    if not 0 <= utilisation < 1:
        raise ValueError("a processor-sharing server has a mean time only below 100% utilisation")
    return cpu_s / (1 - utilisation)


def plan(
    measurements: Sequence[Measurement], *, rps: float, headroom: float = DEFAULT_HEADROOM, entry: str = "gateway"
) -> Plan:
    """Replicas per service for `rps` requests/s at `entry`, each instance at ≤ (1 − headroom) of a core.

    Raises NoTrafficError (a ValueError) when `entry` served nothing in the window.
    """
    if rps < 0:
        raise ValueError("--rps cannot be negative")
    _check_headroom(headroom)
    by_name = {m.service: m for m in measurements}
    front = by_name.get(entry)
    if front is None or front.requests == 0:
        raise NoTrafficError(entry, measurements)
    rows = [_plan_one(m, rps=rps, headroom=headroom, entry_rate=front.rate) for m in measurements]
    rows.sort(key=lambda r: (r.service != entry, r.service))
    return Plan(rps, headroom, entry, front.rate, front.window_s, rows)


def _plan_one(m: Measurement, *, rps: float, headroom: float, entry_rate: float) -> ServicePlan:
    share = m.rate / entry_rate
    measured = ServicePlan(
        service=m.service,
        instances_now=m.instances,
        per_instance_rate=m.per_instance_rate,
        utilisation=m.utilisation,
        capacity=m.capacity,
        time_in_service_s=m.time_in_service_s,
        share=share,
        demand_rps=share * rps,
    )
    capacity, w = m.capacity, m.time_in_service_s
    if w is None:
        return replace(measured, note="no traffic measured")
    if capacity is None:
        return replace(measured, note="no CPU time measured: use a longer window")
    replicas = replicas_for(share * rps, capacity, headroom)
    rate = share * rps / replicas
    rho = rate / capacity
    service_s = 1 / capacity
    # What was measured holds CPU queueing at today's utilisation; the rest is waiting on others.
    waiting_s = max(0.0, w - processor_sharing_time(service_s, m.utilisation)) if m.utilisation < 1 else 0.0
    if rho >= 1:  # only when 1 - headroom rounds to 1
        return replace(measured, replicas=replicas, planned_rate=rate, planned_utilisation=rho, note="no headroom")
    planned_w = waiting_s + processor_sharing_time(service_s, rho)
    return replace(
        measured,
        replicas=replicas,
        planned_rate=rate,
        planned_utilisation=rho,
        planned_time_s=planned_w,
        concurrency=rate * planned_w,
        note="" if rate else "no demand at this mix: the minimum",
    )


def measure(
    first: Mapping[tuple[str, str], Iterable[Sample]],
    last: Mapping[tuple[str, str], Iterable[Sample]],
    window_s: float,
) -> list[Measurement]:
    """Per service, what its instances did between two scrapes keyed by (service, instance).

    An instance in only one scrape, or whose counters went down (it restarted), is left out.
    """
    sums: dict[str, list[float]] = {}
    for key, samples in last.items():
        if key not in first:
            continue
        before, after = _totals(first[key]), _totals(samples)  # requests, their seconds, CPU seconds
        deltas = [b - a for a, b in zip(before, after, strict=True)]
        if min(deltas) < 0:
            continue
        total = sums.setdefault(key[0], [0.0, 0.0, 0.0, 0.0])
        total[0] += 1
        for i, delta in enumerate(deltas, start=1):
            total[i] += delta
    return [
        Measurement(service, int(n), window_s, requests, busy_s, cpu_s)
        for service, (n, requests, busy_s, cpu_s) in sorted(sums.items())
    ]


def measurements_from_json(data: Mapping[str, Any]) -> list[Measurement]:
    """Measurements from `{"window_s": ..., "services": [{"service", "instances", "requests", "busy_s", "cpu_s"}]}`.

    `meshop plan --json` prints this under "measurements", so a measured shop can be planned again offline.
    """
    try:
        window_s = float(data["window_s"])
        return [
            Measurement(
                service=str(row["service"]),
                instances=int(row["instances"]),
                window_s=window_s,
                requests=float(row["requests"]),
                busy_s=float(row["busy_s"]),
                cpu_s=float(row["cpu_s"]),
            )
            for row in data["services"]
        ]
    except (KeyError, TypeError) as exc:
        raise ValueError(f"a measurements file needs window_s and services[]: missing or malformed {exc}") from None


def measurements_to_json(measurements: Sequence[Measurement]) -> dict[str, Any]:
    """The inverse of `measurements_from_json`."""
    window = measurements[0].window_s if measurements else 0.0
    return {
        "window_s": window,
        "services": [
            {
                "service": m.service,
                "instances": m.instances,
                "requests": m.requests,
                "busy_s": m.busy_s,
                "cpu_s": m.cpu_s,
            }
            for m in measurements
        ],
    }


def _totals(samples: Iterable[Sample]) -> tuple[float, ...]:
    return totals(samples, REQUESTS_COUNT, REQUESTS_SECONDS, CPU_SECONDS)


def _check_headroom(headroom: float) -> None:
    # At 100% of a core (headroom 0) a queue grows without bound: W and L have no mean.
    if not 0 < headroom < 1:
        raise ValueError("headroom is a fraction in (0, 1)")
