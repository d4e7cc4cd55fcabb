"""Long-polling an order (`orders.handlers.Settlements`): woken by its checkout, or re-reading it."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from meshop.services.orders.handlers import Settlements


class Order:
    """An order's row as the reader re-reads it: how many times, and its status now."""

    def __init__(self) -> None:
        self.status = "PENDING"
        self.reads = 0
        self._read = asyncio.Event()

    async def reload(self) -> SimpleNamespace:
        self.reads += 1
        self._read.set()
        return SimpleNamespace(status=self.status)

    async def read_times(self, n: int) -> None:
        """Until it has been read `n` times."""
        while self.reads < n:
            self._read.clear()
            await asyncio.wait_for(self._read.wait(), 1.0)


async def test_a_checkout_run_here_wakes_its_readers_who_do_not_poll_meanwhile() -> None:
    settled = Settlements(poll_s=0.01)
    order = Order()
    settled.started("o1")
    readers = [asyncio.create_task(settled.wait("o1", 5.0, order.reload)) for _ in range(2)]
    await asyncio.sleep(0.1)  # ten polling intervals: a poll would have re-read about ten times each
    assert order.reads == 2  # each reader's first read, and no other
    order.status = "CONFIRMED"
    settled.done("o1")
    rows = await asyncio.wait_for(asyncio.gather(*readers), 1.0)
    assert [r.status for r in rows] == ["CONFIRMED", "CONFIRMED"]
    assert order.reads == 4
    assert settled.waiting == 0


async def test_a_checkout_run_elsewhere_is_re_read_every_poll_interval() -> None:
    settled = Settlements(poll_s=0.01)
    order = Order()
    reader = asyncio.create_task(settled.wait("o2", 5.0, order.reload))
    await order.read_times(3)  # it polls: no `done` will come from this process
    order.status = "FAILED"
    row = await asyncio.wait_for(reader, 1.0)
    assert row.status == "FAILED"
    assert settled.waiting == 0


async def test_a_wait_that_runs_out_answers_the_pending_order_and_forgets_it() -> None:
    settled = Settlements(poll_s=0.01)
    order = Order()
    settled.started("o3")
    row = await asyncio.wait_for(settled.wait("o3", 0.05, order.reload), 1.0)
    assert row.status == "PENDING"
    assert order.reads == 2  # the first read and the last, when the time ran out
    assert settled.waiting == 0  # no event left behind for an order nobody reads


async def test_a_checkout_that_ends_still_pending_leaves_its_readers_polling() -> None:
    settled = Settlements(poll_s=0.01)
    order = Order()
    settled.started("o4")
    reader = asyncio.create_task(settled.wait("o4", 5.0, order.reload))
    await order.read_times(1)
    settled.done("o4")  # e.g. the process stopping mid-saga: a sweeper finishes it elsewhere
    await order.read_times(4)
    order.status = "CONFIRMED"
    assert (await asyncio.wait_for(reader, 1.0)).status == "CONFIRMED"


async def test_a_read_that_fails_ends_the_wait_and_leaves_nothing_behind() -> None:
    settled = Settlements(poll_s=0.01)

    async def not_yours() -> SimpleNamespace:
        raise LookupError("no such order")  # as `Orders._owned` raises NotFound for another's order

    settled.started("o5")
    with pytest.raises(LookupError):
        await settled.wait("o5", 5.0, not_yours)
    assert settled.waiting == 0
