"""A stopping process closes its NATS connection within its bound, quietly."""

from __future__ import annotations

import asyncio
import gc
import time
from typing import Any

import nats
import pytest
from nats.aio.msg import Msg

from meshop.mesh.service.lifecycle import CLOSE_TIMEOUT_S, NATS_DRAIN_TIMEOUT_S

pytestmark = pytest.mark.integration


async def test_a_drain_stuck_on_a_busy_subscription_ends_in_time_without_an_error_logged(nats_url: str) -> None:
    loop = asyncio.get_running_loop()
    unhandled: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: unhandled.append(context))
    reported: list[Exception] = []

    async def error_cb(exc: Exception) -> None:
        reported.append(exc)

    nc = await nats.connect(nats_url, drain_timeout=NATS_DRAIN_TIMEOUT_S, error_cb=error_cb)
    release, entered = asyncio.Event(), asyncio.Event()

    async def stuck(_msg: Msg) -> None:  # a handler that does not finish while the process stops
        entered.set()
        await release.wait()

    await nc.subscribe("meshop.test.stuck", cb=stuck)
    for n in range(2):
        await nc.publish("meshop.test.stuck", b"%d" % n)
    await nc.flush()
    await asyncio.wait_for(entered.wait(), 5)  # busy with the first, the second waiting behind it
    started = time.monotonic()
    await asyncio.wait_for(nc.drain(), CLOSE_TIMEOUT_S)  # as Service._close bounds it: not cancelled
    assert time.monotonic() - started < CLOSE_TIMEOUT_S
    assert nc.is_closed
    assert [type(e).__name__ for e in reported] == ["DrainTimeoutError"]  # one warning line in a service
    release.set()
    gc.collect()
    await asyncio.sleep(0.05)  # a while for what the released handler left behind to be reported: nothing
    assert [c["message"] for c in unhandled] == []
