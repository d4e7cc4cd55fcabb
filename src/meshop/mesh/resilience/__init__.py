"""Resilience: one explicit chain of deadline, retries, breakers, bulkhead and timeouts.

The order, outermost first: fallback → deadline → retry (budgeted, jittered, only
retryable failures of retry-safe calls) → instance choice (breaker-open and ejected
instances leave the balancer) → bulkhead → per-try timeout.
"""

from __future__ import annotations

from meshop.mesh.resilience.breaker import BreakerState, CircuitBreaker
from meshop.mesh.resilience.bulkhead import Bulkhead, BulkheadFull
from meshop.mesh.resilience.outlier import OutlierDetector
from meshop.mesh.resilience.policy import BreakerPolicy, BulkheadPolicy, CallPolicy, OutlierPolicy, RetryPolicy
from meshop.mesh.resilience.retry import RetryBudget, backoff_s

__all__ = [
    "BreakerPolicy",
    "BreakerState",
    "Bulkhead",
    "BulkheadFull",
    "BulkheadPolicy",
    "CallPolicy",
    "CircuitBreaker",
    "OutlierDetector",
    "OutlierPolicy",
    "RetryBudget",
    "RetryPolicy",
    "backoff_s",
]
