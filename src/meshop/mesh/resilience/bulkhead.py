"""A bulkhead: bounded concurrency with a bounded queue; overflow fails fast."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque

from meshop.mesh.errors import ServiceUnavailable
from meshop.mesh.resilience.policy import BulkheadPolicy


class BulkheadFull(ServiceUnavailable):
    """A local rejection: too many calls to this service are in flight or queued."""

    slug = "bulkhead-full"
    retryable = False  # local: retrying would only add load


class Bulkhead:
    """`acquire()` (or `try_acquire()`, no coroutine) ... `release()`.

    Slots are counted here rather than in an `asyncio.Semaphore`, so that the common case,
    a free slot, is one synchronous call (`try_acquire`) and no coroutine. Callers queued
    for a slot are served in order: a released slot is handed to the first of them.
    """

    def __init__(self, policy: BulkheadPolicy) -> None:
        self.policy = policy
        self.active = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def try_acquire(self) -> bool:
        """Take a free slot now (nobody queued before us); False when one must be awaited."""
        if self.active < self.policy.max_concurrent and not self._waiters:
            self.active += 1
            return True
        return False

    async def acquire(self) -> None:
        if self.try_acquire():
            return
        if len(self._waiters) >= self.policy.max_queue:
            raise BulkheadFull("too many concurrent calls to this service", retry_after_s=1.0)
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter  # `release` hands its slot over: `active` already counts it
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed a slot, then cancelled before using it: pass it on
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            raise

    def release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.active -= 1
