"""`meshop up --replicas gateway=2`: two gateway processes serve one port.

The kernel spreads new connections over the replicas (SO_REUSEPORT); each replica also
listens on a port of its own, the address it registers (health checks, /metrics and the
console must reach one process, not whichever the kernel picks). A replica killed -9 is
restarted while the other keeps the port answering.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.e2e.conftest import Shop, start_shop

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shop]:
    env = {"MESHOP_GATEWAY_RATE_LIMIT_PER_IP": "off"}  # one client address makes all the load here
    running = start_shop(tmp_path_factory.mktemp("gateways"), "--replicas", "gateway=2", env=env)
    yield running
    running.stop()


def gateways(shop: Shop) -> list[dict[str, object]]:
    return [r for r in shop.status() if r["service"] == "gateway"]


async def fresh_connection_get(url: str, request_id: str) -> int:
    """One GET on a connection of its own (so the kernel picks a replica for it)."""
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session,
        session.get(url + "/api/catalog/products?limit=1", headers={"x-request-id": request_id}) as resp,
    ):
        await resp.read()
        return resp.status


def process_state(pid: int) -> str | None:
    """The state letter in /proc/PID/stat (R, S, Z, ...), None once the process is reaped."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return None


async def gone(pid: int, within_s: float = 5.0) -> None:
    """Until `pid` has exited (a zombie, or reaped): its sockets are closed by then."""
    deadline = time.monotonic() + within_s
    while process_state(pid) not in (None, "Z", "X"):
        assert time.monotonic() < deadline, f"process {pid} did not exit"
        await asyncio.sleep(0.01)


def served_by(shop: Shop, request_id: str) -> str | None:
    """The process (`gateway-1`, `gateway-2`) whose access log has `request_id`."""
    found = re.search(rf"^\s*(gateway-\d) \|.*request_id={request_id}\b", shop.output(), re.M)
    return found.group(1) if found else None


async def test_both_replicas_serve_the_shared_port_and_each_registers_its_own(shop: Shop) -> None:
    rows = gateways(shop)
    assert len(rows) == 2
    assert len({r["pid"] for r in rows}) == 2
    assert len({r["address"] for r in rows}) == 2, rows  # one address per instance
    assert not any(str(r["address"]).endswith(f":{shop.url.rsplit(':', 1)[1]}") for r in rows)
    assert all(r["health"] == "ready" for r in rows)
    assert "each keeps its own rate-limit state" in shop.output()  # the startup warning

    ids = [f"replicas-{uuid.uuid4().hex[:12]}" for _ in range(40)]
    statuses = [await fresh_connection_get(shop.url, rid) for rid in ids]
    assert set(statuses) == {200}
    for _ in range(25):  # access lines are flushed every 100 ms
        if all(served_by(shop, rid) is not None for rid in ids):
            break
        await asyncio.sleep(0.2)
    assert {served_by(shop, rid) for rid in ids} == {"gateway-1", "gateway-2"}


async def test_a_killed_replica_is_restarted_while_the_other_keeps_the_port(shop: Shop) -> None:
    victim = gateways(shop)[0]
    os.kill(int(victim["pid"]), signal.SIGKILL)  # type: ignore[call-overload]
    await gone(int(victim["pid"]))  # its listener has left the port's group
    statuses: list[int] = []
    end = time.monotonic() + 3.0
    while time.monotonic() < end:  # new connections reach only the survivor meanwhile
        statuses.append(await fresh_connection_get(shop.url, f"after-kill-{len(statuses)}"))
    assert len(statuses) > 20
    assert set(statuses) == {200}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        rows = gateways(shop)
        if len(rows) == 2 and victim["pid"] not in {r["pid"] for r in rows}:
            break
        await asyncio.sleep(0.3)
    else:
        raise AssertionError(f"the killed gateway replica did not come back: {gateways(shop)}")
    assert re.search(r"gateway-\d exited with code -9; restart #1", shop.output())
