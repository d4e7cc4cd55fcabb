"""`meshop explain`: the resilience chain of one operation, with its resolved policy."""

from __future__ import annotations

from typing import Any

from meshop.mesh.api.operation import Access, Operation
from meshop.mesh.resilience.policy import CallPolicy


def explain(op: Operation[Any, Any], policy: CallPolicy) -> str:
    """A readable description of what happens, in order, when `op` is called."""
    retry, breaker, bulkhead, outlier = policy.retry, policy.breaker, policy.bulkhead, policy.outlier
    if op.retry_safe:
        safety = "retry-safe (idempotent)"
    elif op.requires_key:
        safety = "retried only with its required Idempotency-Key"
    else:
        safety = "NOT retried after it may have been sent (not idempotent, no key)"
    return "\n".join(
        [
            f"{op.qualified}: {op.method} {op.path}  (NATS subject {op.subject}, transport {policy.transport})",
            f"  {safety}",
            f"  {_access(op)}",
            "  1. fallback      only if the caller passes one; wraps everything below",
            f"  2. deadline     {policy.timeout_s:g}s overall (or the caller's, if sooner); "
            "the remainder travels downstream in meshop-deadline-ms; an expired call is not sent",
            f"  3. retry        up to {retry.attempts} tries; backoff full jitter "
            f"{retry.backoff_base_s:g}s x 2^n capped at {retry.backoff_max_s:g}s (or Retry-After); "
            f"only connect errors, 429, 503 and timeouts of retry-safe calls; "
            f"budget {retry.budget_ratio:.0%} of requests + {retry.budget_min_per_s:g}/s; "
            f"none with < {retry.min_remaining_s:g}s of deadline left; each retry picks another instance",
            f"  4. instance     balancer {policy.balancer} over instances whose breaker is not open and that are "
            f"not ejected ({outlier.consecutive_failures} consecutive failures eject for "
            f"{outlier.base_ejection_s:g}s x n, at most {outlier.max_ejected_fraction:.0%} of a service)",
            f"     breaker      per instance, {breaker.window} window of {breaker.window_size}, "
            f"opens at {breaker.failure_rate:.0%} failures or {breaker.slow_call_rate:.0%} calls slower than "
            f"{breaker.slow_call_s:g}s after {breaker.minimum_calls} calls; open {breaker.open_s:g}s, "
            f"then {breaker.half_open_probes} half-open probes",
            f"  5. bulkhead     {bulkhead.max_concurrent} concurrent calls, {bulkhead.max_queue} queued; "
            "overflow fails fast with 503 (never retried)",
            f"  6. per-try      {policy.per_try_timeout_s:g}s timeout for one exchange"
            + (f" (the operation states {op.per_try_timeout_s:g}s)" if op.per_try_timeout_s is not None else ""),
        ]
    )


def _access(op: Operation[Any, Any]) -> str:
    """Who may call `op`: for an INTERNAL operation, the services its contract lists."""
    if op.access is not Access.INTERNAL:
        return f"access: {op.access.value} (through the gateway; user and admin operations verify the user's token)"
    if not op.callers:
        return "callers: none (an INTERNAL operation that lists no caller is closed to every service)"
    return (
        f"callers: {', '.join(op.callers)} only, proven by a service identity "
        "(none or invalid: 401; another service: 403)"
    )
