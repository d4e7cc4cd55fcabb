"""Passive outlier ejection with a panic threshold (Envoy's model)."""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Sequence

from meshop.mesh.registry.base import forget_departed
from meshop.mesh.resilience.policy import OutlierPolicy

Clock = Callable[[], float]


class OutlierDetector:
    """Ejects an instance after consecutive failures, for base × (times ejected) seconds.

    When ejecting another instance would leave less than `1 − max_ejected_fraction` of a
    service, it is not ejected: better to send to a suspect instance than to none.
    """

    def __init__(self, policy: OutlierPolicy, *, clock: Clock = time.monotonic) -> None:
        self.policy = policy
        self._clock = clock
        self._consecutive: dict[str, int] = {}
        self._ejected_until: dict[str, float] = {}
        self._times_ejected: dict[str, int] = {}
        self._failing_checks: set[str] = set()

    def ejected(self, instance_id: str) -> bool:
        """Ejected for consecutive failures, or failing its active health check."""
        if instance_id in self._failing_checks:
            return True
        until = self._ejected_until.get(instance_id)
        return until is not None and until > self._clock()

    def checked(self, instance_id: str, *, ready: bool) -> None:
        """Record an active health check (GET /ready) of one instance."""
        if ready:
            self._failing_checks.discard(instance_id)
        else:
            self._failing_checks.add(instance_id)

    def succeeded(self, instance_id: str) -> None:
        """Record a success: the instance's run of consecutive failures ends."""
        if self._consecutive.get(instance_id):
            self._consecutive[instance_id] = 0

    def record(self, instance_id: str, *, failed: bool, pool: Callable[[], Sequence[str]]) -> None:
        """Record an outcome; `pool` lists the service's instances (asked only on failure)."""
        if not failed:
            self.succeeded(instance_id)
            return
        count = self._consecutive.get(instance_id, 0) + 1
        self._consecutive[instance_id] = count
        if count < self.policy.consecutive_failures or self.ejected(instance_id):
            return
        members = pool()
        already = sum(1 for i in members if i != instance_id and self.ejected(i))
        if (already + 1) / max(1, len(members)) > self.policy.max_ejected_fraction:
            return  # panic threshold: keep it
        times = self._times_ejected.get(instance_id, 0) + 1
        self._times_ejected[instance_id] = times
        duration = min(self.policy.max_ejection_s, self.policy.base_ejection_s * times)
        self._ejected_until[instance_id] = self._clock() + duration
        self._consecutive[instance_id] = 0

    def forget(self, alive: Collection[str]) -> None:
        """Drop the records of instances not in `alive` (departed ones)."""
        forget_departed(self._consecutive, alive)
        forget_departed(self._ejected_until, alive)
        forget_departed(self._times_ejected, alive)
        self._failing_checks.intersection_update(alive)
