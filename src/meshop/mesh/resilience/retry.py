"""Backoff with full jitter, and the retry budget that keeps retries from piling on."""

from __future__ import annotations

import random
import time
from collections.abc import Callable

from meshop.mesh.resilience.policy import RetryPolicy
from meshop.mesh.resilience.window import SlidingCounts

Clock = Callable[[], float]


def backoff_s(policy: RetryPolicy, retry: int, rng: random.Random) -> float:
    """Full jitter: uniform in [0, min(max, base × 2^retry)] (AWS architecture blog)."""
    return rng.uniform(0.0, min(policy.backoff_max_s, policy.backoff_base_s * 2**retry))


#: The retry budget's window is counted in this many slices (Finagle's retry budget too).
BUDGET_SLICES = 10
_REQUESTS, _RETRIES = 0, 1


class RetryBudget:
    """Allows retries up to `budget_ratio` of recent requests plus a per-second floor.

    Recent: within `budget_window_s`, counted in `BUDGET_SLICES` slices (`SlidingCounts`),
    so a request costs a counter increment and the budget's memory is fixed.
    """

    def __init__(self, policy: RetryPolicy, *, clock: Clock = time.monotonic) -> None:
        self.policy = policy
        self._clock = clock
        self._counts = SlidingCounts(policy.budget_window_s, BUDGET_SLICES, 2)
        self.rejected = 0

    def request(self) -> None:
        """Record a first attempt (it deposits into the budget)."""
        self._counts.add(self._clock(), _REQUESTS)

    def try_retry(self) -> bool:
        """Withdraw one retry if the budget allows it."""
        now, counts, policy = self._clock(), self._counts, self.policy
        allowed = policy.budget_ratio * counts.total(now, _REQUESTS) + policy.budget_min_per_s * policy.budget_window_s
        if counts.total(now, _RETRIES) + 1 > allowed:
            self.rejected += 1
            return False
        counts.add(now, _RETRIES)
        return True

    @property
    def retries_in_window(self) -> int:
        return self._counts.total(self._clock(), _RETRIES)
