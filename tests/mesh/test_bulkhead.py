"""The bulkhead's slots and queue, without sockets."""

from __future__ import annotations

import asyncio

import pytest

from meshop.mesh.resilience import BulkheadFull
from meshop.mesh.resilience.bulkhead import Bulkhead
from meshop.mesh.resilience.policy import BulkheadPolicy


def bulkhead(max_concurrent: int = 2, max_queue: int = 2) -> Bulkhead:
    return Bulkhead(BulkheadPolicy(max_concurrent=max_concurrent, max_queue=max_queue))


async def test_free_slots_are_taken_at_once_and_overflow_beyond_the_queue_is_refused() -> None:
    b = bulkhead(max_concurrent=2, max_queue=1)
    assert b.try_acquire()
    assert b.try_acquire()
    assert not b.try_acquire()
    queued = asyncio.create_task(b.acquire())
    await asyncio.sleep(0)
    assert b.waiting == 1
    with pytest.raises(BulkheadFull):
        await b.acquire()
    b.release()  # handed to the queued caller: still two active
    await queued
    assert (b.active, b.waiting) == (2, 0)
    b.release()
    b.release()
    assert b.active == 0


async def test_queued_callers_are_served_in_order_and_nobody_jumps_the_queue() -> None:
    b = bulkhead(max_concurrent=1, max_queue=3)
    await b.acquire()
    order: list[int] = []

    async def call(n: int) -> None:
        await b.acquire()
        order.append(n)

    tasks = [asyncio.create_task(call(n)) for n in range(3)]
    await asyncio.sleep(0)
    b.release()
    await asyncio.sleep(0)
    assert not b.try_acquire()  # one of the queued holds it; the rest still wait
    for _ in range(3):
        b.release()
        await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2]
    assert b.active == 0


async def test_a_cancelled_waiter_leaves_the_queue_and_a_slot_handed_to_it_is_passed_on() -> None:
    b = bulkhead(max_concurrent=1, max_queue=2)
    await b.acquire()
    gone = asyncio.create_task(b.acquire())
    await asyncio.sleep(0)
    gone.cancel()
    await asyncio.sleep(0)
    assert b.waiting == 0

    handed = asyncio.create_task(b.acquire())
    after = asyncio.create_task(b.acquire())
    await asyncio.sleep(0)
    b.release()  # the slot goes to `handed`, which is cancelled before it runs
    handed.cancel()
    await asyncio.gather(handed, return_exceptions=True)
    await after  # it got the slot `handed` passed on
    assert (b.active, b.waiting) == (1, 0)
    b.release()
    assert b.active == 0
