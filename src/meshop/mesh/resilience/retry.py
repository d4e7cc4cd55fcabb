"""Backoff with full jitter, and the retry budget that keeps retries from piling on."""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Callable

from meshop.mesh.resilience.policy import RetryPolicy

Clock = Callable[[], float]


def backoff_s(policy: RetryPolicy, retry: int, rng: random.Random) -> float:
    """Full jitter: uniform in [0, min(max, base × 2^retry)] (AWS architecture blog)."""
    return rng.uniform(0.0, min(policy.backoff_max_s, policy.backoff_base_s * 2**retry))


class RetryBudget:
    """Allows retries up to `budget_ratio` of recent requests plus a per-second floor."""

    def __init__(self, policy: RetryPolicy, *, clock: Clock = time.monotonic) -> None:
        self.policy = policy
        self._clock = clock
        self._requests: deque[float] = deque()
        self._retries: deque[float] = deque()
        self.rejected = 0

    def _trim(self, now: float) -> None:
        oldest = now - self.policy.budget_window_s
        for log in (self._requests, self._retries):
            while log and log[0] <= oldest:
                log.popleft()

    def request(self) -> None:
        """Record a first attempt (it deposits into the budget)."""
        now = self._clock()
        self._requests.append(now)
        if self._requests[0] <= now - self.policy.budget_window_s:  # amortised: memory stays bounded
            self._trim(now)

    def try_retry(self) -> bool:
        """Withdraw one retry if the budget allows it."""
        now = self._clock()
        self._trim(now)
        allowed = (
            self.policy.budget_ratio * len(self._requests) + self.policy.budget_min_per_s * self.policy.budget_window_s
        )
        if len(self._retries) + 1 > allowed:
            self.rejected += 1
            return False
        self._retries.append(now)
        return True

    @property
    def retries_in_window(self) -> int:
        self._trim(self._clock())
        return len(self._retries)
