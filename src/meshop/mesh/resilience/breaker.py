"""A circuit breaker per instance: closed, open, half-open (Resilience4j's model)."""

from __future__ import annotations

import enum
import time
from collections.abc import Callable

from meshop.mesh.resilience.policy import BreakerPolicy
from meshop.mesh.resilience.window import SlidingCounts

Clock = Callable[[], float]
_CALLS, _FAILURES, _SLOWS = 0, 1, 2  # the time window's kinds of count


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Opens when the failure (or slow-call) rate over its window crosses the threshold.

    While open it admits nothing; after `open_s` it turns half-open and admits up to
    `half_open_probes` calls: if they all succeed it closes, any failure reopens it.

    The window is Resilience4j's: the last `window_size` calls in a ring of their
    outcomes, or the last `window_size` seconds in one-second slices (`SlidingCounts`).
    Either way a call costs a few counter updates, and memory is fixed whatever the rate.
    """

    def __init__(self, policy: BreakerPolicy, *, clock: Clock = time.monotonic) -> None:
        self.policy = policy
        self._clock = clock
        self.state = BreakerState.CLOSED
        self._opened_at = 0.0
        # count window: each slot a call's outcome (bit 0 failed, bit 1 slow), the next
        # slot to write, and the failures, slow calls and calls in the ring
        self._ring = [0] * policy.window_size if policy.window == "count" else []
        self._next = 0
        self._failures = 0
        self._slows = 0
        self._calls = 0
        # time window: calls, failures and slow calls per second
        self._seconds = SlidingCounts(float(policy.window_size), policy.window_size, 3)
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
        if self._ring:
            calls, failures, slows = self._count(failed, slow)
        else:
            calls, failures, slows = self._time(failed, slow)
        if calls < self.policy.minimum_calls:
            return
        if failures / calls >= self.policy.failure_rate or slows / calls >= self.policy.slow_call_rate:
            self._open()

    def _count(self, failed: bool, slow: bool) -> tuple[int, int, int]:
        """Record a call in the ring of the last calls; the ring's calls, failures, slow calls."""
        ring, slot = self._ring, self._next
        gone = ring[slot]
        ring[slot] = failed | slow << 1
        self._failures += failed - (gone & 1)
        self._slows += slow - (gone >> 1)
        self._next = slot + 1 if slot + 1 < len(ring) else 0
        if self._calls < len(ring):
            self._calls += 1
        return self._calls, self._failures, self._slows

    def _time(self, failed: bool, slow: bool) -> tuple[int, int, int]:
        """Record a call in the last seconds; their calls, failures, slow calls."""
        now, seconds = self._clock(), self._seconds
        seconds.add(now, _CALLS)
        if failed:
            seconds.add(now, _FAILURES)
        if slow:
            seconds.add(now, _SLOWS)
        return seconds.total(now, _CALLS), seconds.total(now, _FAILURES), seconds.total(now, _SLOWS)

    @property
    def calls_in_window(self) -> int:
        """The calls the failure rate is taken over now."""
        return self._calls if self._ring else self._seconds.total(self._clock(), _CALLS)

    def _open(self) -> None:
        self._opened_at = self._clock()
        self._move(BreakerState.OPEN)

    def _move(self, state: BreakerState) -> None:
        self.state = state
        self.transitions += 1
        self._ring = [0] * len(self._ring)
        self._next = self._calls = self._failures = self._slows = 0
        self._seconds.clear()
        self._probes_admitted = 0
        self._probes_succeeded = 0
