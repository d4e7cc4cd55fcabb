"""The supervisor of `meshop up`: a killed service is restarted, and SIGTERM drains the shop and
ends every process. (A Ctrl-C's stop: test_stop.py.)

This module's shop is its own: it kills one of its processes and stops it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator

import aiohttp
import pytest

from tests.e2e.api import Api
from tests.e2e.conftest import Shop, start_shop

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def supervised(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shop]:
    running = start_shop(tmp_path_factory.mktemp("supervised"))
    yield running
    running.stop()


async def test_a_killed_service_is_restarted_by_the_supervisor(
    supervised: Shop, session: aiohttp.ClientSession
) -> None:
    catalog = next(r for r in supervised.status() if r["service"] == "catalog")
    os.kill(catalog["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 30
    while True:
        rows = [r for r in supervised.status() if r["service"] == "catalog" and r["health"] == "ready"]
        if rows and all(r["pid"] != catalog["pid"] for r in rows):
            break
        assert time.monotonic() < deadline, "catalog was not restarted"
        await asyncio.sleep(0.3)
    status, _, _ = await Api(session, supervised.url).request("GET", "/catalog/products?limit=1")
    assert status == 200
    assert "catalog exited with code -9" in supervised.output()


def test_sigterm_drains_and_exits_within_10s_leaving_no_process(supervised: Shop) -> None:
    """Runs last in this module: it stops the module's shop."""
    pids = [r["pid"] for r in supervised.status()]
    started = time.monotonic()
    assert supervised.stop(timeout_s=12, sig=signal.SIGTERM) == 0
    assert time.monotonic() - started < 10
    alive = []
    for pid in pids:
        try:
            os.kill(pid, 0)
            alive.append(pid)
        except ProcessLookupError:
            pass
    assert alive == []
