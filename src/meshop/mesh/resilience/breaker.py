"""A circuit breaker per instance: closed, open, half-open (Resilience4j's model)."""

from __future__ import annotations

import enum
import time
from collections import deque
from collections.abc import Callable

from meshop.mesh.resilience.policy import BreakerPolicy

Clock = Callable[[], float]


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Opens when the failure (or slow-call) rate over its window crosses the threshold.

    While open it admits nothing; after `open_s` it turns half-open and admits up to
    `half_open_probes` calls: if they all succeed it closes, any failure reopens it.
    """

    def __init__(self, policy: BreakerPolicy, *, clock: Clock = time.monotonic) -> None:
        self.policy = policy
        self._clock = clock
        self.state = BreakerState.CLOSED
        self._opened_at = 0.0
        self._calls: deque[tuple[float, bool, bool]] = deque()  # (at, failed, slow)
        self._failures = 0  # among _calls
        self._slows = 0
        self._probes_admitted = 0
        self._probes_succeeded = 0
        self.transitions = 0

    def allow(self) -> bool:
        """May a call go to this instance now? (A half-open admission counts as a probe.)"""
        if self.state is BreakerState.OPEN:
            if self._clock() - self._opened_at < self.policy.open_s:
                return False
            self._move(BreakerState.HALF_OPEN)
        if self.state is BreakerState.HALF_OPEN:
            if self._probes_admitted >= self.policy.half_open_probes:
                return False
            self._probes_admitted += 1
        return True

    def available(self) -> bool:
        """Like `allow`, without admitting a probe (for filtering candidates)."""
        if self.state is BreakerState.OPEN:
            return self._clock() - self._opened_at >= self.policy.open_s
        if self.state is BreakerState.HALF_OPEN:
            return self._probes_admitted < self.policy.half_open_probes
        return True

    def record(self, *, failed: bool, duration_s: float) -> None:
        slow = duration_s >= self.policy.slow_call_s
        if self.state is BreakerState.HALF_OPEN:
            if failed or slow:
                self._open()
                return
            self._probes_succeeded += 1
            if self._probes_succeeded >= self.policy.half_open_probes:
                self._move(BreakerState.CLOSED)
            return
        if self.state is BreakerState.OPEN:
            return  # a late answer from before it opened
        now = self._clock()
        self._calls.append((now, failed, slow))
        self._failures += failed
        self._slows += slow
        self._trim(now)
        calls = len(self._calls)
        if calls < self.policy.minimum_calls:
            return
        if self._failures / calls >= self.policy.failure_rate or self._slows / calls >= self.policy.slow_call_rate:
            self._open()

    def _trim(self, now: float) -> None:
        count_window = self.policy.window == "count"
        while self._calls and (
            len(self._calls) > self.policy.window_size
            if count_window
            else self._calls[0][0] <= now - self.policy.window_size
        ):
            _, failed, slow = self._calls.popleft()
            self._failures -= failed
            self._slows -= slow

    def _open(self) -> None:
        self._opened_at = self._clock()
        self._move(BreakerState.OPEN)

    def _move(self, state: BreakerState) -> None:
        self.state = state
        self.transitions += 1
        self._calls.clear()
        self._failures = self._slows = 0
        self._probes_admitted = 0
        self._probes_succeeded = 0
