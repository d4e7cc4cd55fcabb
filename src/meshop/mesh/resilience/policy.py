"""Resilience policies: frozen values with safe defaults, set per service and operation."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Retries with exponential backoff and full jitter, within a budget."""

    attempts: int = 3  # tries in all, the first included
    backoff_base_s: float = 0.02
    backoff_max_s: float = 1.0
    #: Retries may add at most this fraction of the requests (Linkerd's retry budget)...
    budget_ratio: float = 0.2
    #: ...plus this many retries per second, so a quiet client can still retry.
    budget_min_per_s: float = 5.0
    budget_window_s: float = 10.0
    #: No retry is started with less than this much of the deadline left.
    min_remaining_s: float = 0.02

    def __post_init__(self) -> None:
        if self.attempts < 1 or not 0 <= self.budget_ratio <= 1 or self.budget_window_s <= 0:
            raise ValueError("attempts must be >= 1, budget_ratio within [0, 1] and budget_window_s > 0")


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    """A per-instance circuit breaker over a count- or time-based sliding window."""

    window: Literal["count", "time"] = "count"
    window_size: int = 20  # calls (count) or seconds (time)
    minimum_calls: int = 10
    failure_rate: float = 0.5
    slow_call_rate: float = 1.0  # 1.0: slowness alone never opens it
    slow_call_s: float = 2.0
    open_s: float = 5.0
    half_open_probes: int = 3

    def __post_init__(self) -> None:
        if self.window_size < 1 or self.minimum_calls < 1 or self.half_open_probes < 1:
            raise ValueError("window_size, minimum_calls and half_open_probes must be >= 1")
        if not (0 < self.failure_rate <= 1 and 0 < self.slow_call_rate <= 1):
            raise ValueError("failure_rate and slow_call_rate must be within (0, 1]")


@dataclass(frozen=True, slots=True)
class BulkheadPolicy:
    """At most `max_concurrent` calls to a service at once, `max_queue` more waiting."""

    max_concurrent: int = 64
    max_queue: int = 256


@dataclass(frozen=True, slots=True)
class OutlierPolicy:
    """Passive ejection: consecutive failures eject an instance for base × n seconds."""

    consecutive_failures: int = 5
    base_ejection_s: float = 5.0
    max_ejection_s: float = 60.0
    #: Never eject more than this fraction of a service (Envoy's panic threshold).
    max_ejected_fraction: float = 0.5


@dataclass(frozen=True, slots=True)
class CallPolicy:
    """Everything the chain needs for one operation."""

    timeout_s: float = 10.0  # the overall deadline
    per_try_timeout_s: float = 3.0
    balancer: str = "peak_ewma"
    transport: Literal["http", "nats"] = "http"
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    breaker: BreakerPolicy = field(default_factory=BreakerPolicy)
    bulkhead: BulkheadPolicy = field(default_factory=BulkheadPolicy)
    outlier: OutlierPolicy = field(default_factory=OutlierPolicy)


_NESTED = {"retry": RetryPolicy, "breaker": BreakerPolicy, "bulkhead": BulkheadPolicy, "outlier": OutlierPolicy}


def merged(base: CallPolicy, overrides: dict[str, Any]) -> CallPolicy:
    """`base` with the values of a config table applied (nested tables by name)."""
    flat: dict[str, Any] = {}
    for key, value in overrides.items():
        if key in _NESTED:
            if not isinstance(value, dict):
                raise ValueError(f"{key} must be a table")
            flat[key] = replace(getattr(base, key), **value)
        elif key in ("services", "operations"):
            continue
        elif key in CallPolicy.__dataclass_fields__:
            flat[key] = value
        else:
            raise ValueError(f"unknown policy setting {key!r}")
    return replace(base, **flat)
