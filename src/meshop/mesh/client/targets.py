"""What a caller keeps per service it calls: its policy, balancer, bulkhead, retry budget,
outlier detector and one circuit breaker per instance."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from meshop.mesh.api.operation import Operation
from meshop.mesh.client.balancing import Balancer, make_balancer
from meshop.mesh.resilience import Bulkhead, CallPolicy, CircuitBreaker, OutlierDetector, RetryBudget
from meshop.mesh.resilience.config import Policies

Clock = Callable[[], float]


@dataclass
class Target:
    """One service a caller calls, and the state its calls share."""

    policy: CallPolicy
    balancer: Balancer
    bulkhead: Bulkhead
    budget: RetryBudget
    outliers: OutlierDetector
    breakers: dict[str, CircuitBreaker] = field(default_factory=dict)
    #: Picks of an instance in the caller's zone and elsewhere (zone-aware clients only).
    local_picks: int = 0
    remote_picks: int = 0


class Targets:
    """The caller's `Target`s, made on first use from `policies`, and its call policies."""

    def __init__(self, policies: Policies, *, clock: Clock, rng: random.Random) -> None:
        self.policies = policies
        self._clock = clock
        self._rng = rng
        self._by_service: dict[str, Target] = {}
        self._by_operation: dict[tuple[str, float | None], CallPolicy] = {}

    def items(self) -> list[tuple[str, Target]]:
        return list(self._by_service.items())

    def snapshot(self) -> dict[str, Target]:
        return dict(self._by_service)

    def get(self, service: str) -> Target:
        found = self._by_service.get(service)
        if found is None:
            policy = self.policies.for_operation(service, None)
            found = self._by_service[service] = Target(
                policy=policy,
                balancer=make_balancer(policy.balancer, clock=self._clock, rng=self._rng),
                bulkhead=Bulkhead(policy.bulkhead),
                budget=RetryBudget(policy.retry, clock=self._clock),
                outliers=OutlierDetector(policy.outlier, clock=self._clock),
            )
        return found

    def breaker(self, target: Target, instance_id: str) -> CircuitBreaker:
        """`target`'s breaker of one instance, made on first use."""
        found = target.breakers.get(instance_id)
        if found is None:
            found = target.breakers[instance_id] = CircuitBreaker(target.policy.breaker, clock=self._clock)
        return found

    def policy(self, op: Operation[Any, Any], timeout_s: float | None = None) -> CallPolicy:
        """The policy of a call to `op`; with `timeout_s`, a gateway route's own deadline.

        A route's timeout shorter than the policy's cuts each try at it too. A longer one:
        whoever set it asks for a slow operation to be waited for, so one try may take all of it.
        """
        key = (op.subject, timeout_s)
        found = self._by_operation.get(key)
        if found is None:
            found = self.policies.for_operation(op.service, op.name, per_try_timeout_s=op.per_try_timeout_s)
            if timeout_s is not None:
                per_try = timeout_s if timeout_s > found.timeout_s else min(found.per_try_timeout_s, timeout_s)
                found = replace(found, timeout_s=timeout_s, per_try_timeout_s=per_try)
            self._by_operation[key] = found
        return found
