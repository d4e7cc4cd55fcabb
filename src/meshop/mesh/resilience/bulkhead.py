"""A bulkhead: bounded concurrency with a bounded queue; overflow fails fast."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from meshop.mesh.errors import ServiceUnavailable
from meshop.mesh.resilience.policy import BulkheadPolicy


class BulkheadFull(ServiceUnavailable):
    """A local rejection: too many calls to this service are in flight or queued."""

    slug = "bulkhead-full"
    retryable = False  # local: retrying would only add load


class Bulkhead:
    """Use `async with bulkhead.slot():`, or `await acquire()` ... `release()` on hot paths."""

    def __init__(self, policy: BulkheadPolicy) -> None:
        self.policy = policy
        self._slots = asyncio.Semaphore(policy.max_concurrent)
        self.active = 0
        self.waiting = 0

    async def acquire(self) -> None:
        if self._slots.locked():
            if self.waiting >= self.policy.max_queue:
                raise BulkheadFull("too many concurrent calls to this service", retry_after_s=1.0)
            self.waiting += 1
            try:
                await self._slots.acquire()
            finally:
                self.waiting -= 1
        else:
            await self._slots.acquire()  # free: returns without suspending
        self.active += 1

    def release(self) -> None:
        self.active -= 1
        self._slots.release()

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        await self.acquire()
        try:
            yield
        finally:
            self.release()
