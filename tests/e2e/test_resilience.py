"""Three catalog replicas under steady load through the gateway: crash, slowness, errors."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import aiohttp
import pytest

from tests.e2e.api import Api, order_body, sample
from tests.e2e.conftest import Shop, start_shop

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shop]:
    env = {
        "MESHOP_CHAOS": "1",
        "MESHOP_DEBUG_HEADERS": "1",
        "MESHOP_POLICY__catalog__breaker__open_s": "3",
        "MESHOP_GATEWAY_RATE_LIMIT_PER_IP": "off",  # one client address makes all the load here
    }
    running = start_shop(tmp_path_factory.mktemp("replicas"), "--replicas", "catalog=3", env=env)
    yield running
    running.stop()


def catalog_instances(shop: Shop, service: str = "catalog") -> list[dict[str, object]]:
    return [r for r in shop.status() if r["service"] == service and r["health"] == "ready"]


async def wait_for_replicas(shop: Shop, n: int = 3, within_s: float = 30) -> list[dict[str, object]]:
    deadline = time.monotonic() + within_s
    while len(rows := catalog_instances(shop)) < n:
        assert time.monotonic() < deadline, f"only {len(rows)} catalog replicas ready"
        await asyncio.sleep(0.3)
    return rows


@dataclass
class Load:
    statuses: Counter[int] = field(default_factory=Counter)
    upstreams: Counter[str] = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)  # what a non-200 answer said, for the failure message


async def steady_load(url: str, seconds: float, *, clients: int = 6, during: object = None) -> Load:
    """GET /api/catalog/products (idempotent) from `clients` loops for `seconds`."""
    load = Load()
    end = time.monotonic() + seconds
    async with aiohttp.ClientSession() as session:

        async def loop() -> None:
            while time.monotonic() < end:
                async with session.get(url + "/api/catalog/products?limit=3") as resp:
                    body = await resp.read()
                    if resp.status != 200:
                        load.unexpected.append(f"{resp.status} {dict(resp.headers)} {body[:500]!r}")
                    upstream = resp.headers.get("x-meshop-upstream", "?")
                    load.statuses[resp.status] += 1
                    load.upstreams[upstream] += 1

        tasks = [asyncio.create_task(loop()) for _ in range(clients)]
        if during is not None:
            await during  # type: ignore[misc]
        await asyncio.gather(*tasks)
    return load


async def set_faults(address: str, what: str = "faults", **faults: float) -> None:
    """Inject faults into a whole instance (`faults`), or into payments' provider (`provider`)."""
    async with aiohttp.ClientSession() as session, session.put(f"http://{address}/_meshop/{what}", json=faults) as resp:
        assert resp.status == 200, await resp.text()


async def gateway_picks(url: str, instance_id: str) -> float:
    """How many tries the gateway has sent to one catalog instance (its /metrics)."""
    async with aiohttp.ClientSession() as session, session.get(url + "/metrics") as resp:
        return sample(await resp.text(), "meshop_balancer_picks", target="catalog", instance=instance_id)


async def test_kill_9_of_a_replica_under_load_fails_no_idempotent_request(shop: Shop) -> None:
    """Its requests in flight and those sent as it died are retried elsewhere; it leaves the
    rotation within seconds; its restarted process joins as a new instance."""
    first = (await wait_for_replicas(shop))[0]
    victim, pid = str(first["instance_id"]), int(first["pid"])  # type: ignore[call-overload]
    picks: list[float] = []

    async def kill_soon() -> None:
        await asyncio.sleep(1.5)  # under load a while first: it dies with requests in flight
        os.kill(pid, signal.SIGKILL)
        await asyncio.sleep(3.5)  # its registration expires (2.25 s), its health check fails
        picks.append(await gateway_picks(shop.url, victim))

    load = await steady_load(shop.url, 6.5, during=kill_soon())
    assert sum(load.statuses.values()) > 200
    assert set(load.statuses) == {200}, (load.statuses, load.unexpected[:3], _errors(shop))
    # Out of the rotation: at most a half-open probe (open_s is 3 s) in the last 1.5 s.
    assert await gateway_picks(shop.url, victim) - picks[0] <= 1
    rows = await wait_for_replicas(shop)
    assert f"{victim}-r1" in {r["instance_id"] for r in rows}  # the supervisor's restart, a new instance
    assert victim not in {r["instance_id"] for r in rows}


def _errors(shop: Shop) -> list[str]:
    """The shop's log lines that report an error (for a failure's message)."""
    return [line for line in shop.output().splitlines() if "error" in line.lower() or "failed" in line][-20:]


async def test_a_slow_replica_gets_under_10_percent_of_traffic(shop: Shop) -> None:
    rows = await wait_for_replicas(shop)
    slow = rows[0]
    await set_faults(str(slow["address"]), latency_ms=50)
    try:
        await steady_load(shop.url, 1.0)  # let the balancer learn
        load = await steady_load(shop.url, 5.0)
    finally:
        await set_faults(str(slow["address"]), latency_ms=0)
    share = load.upstreams[str(slow["instance_id"])] / sum(load.upstreams.values())
    assert set(load.statuses) == {200}
    assert share < 0.10, (share, load.upstreams)


async def test_a_failing_replica_is_cut_off_by_its_breaker_and_returns_after_recovery(shop: Shop) -> None:
    rows = await wait_for_replicas(shop)
    bad = rows[-1]
    await set_faults(str(bad["address"]), error_rate=1.0)
    try:
        await steady_load(shop.url, 1.5)  # its breaker opens
        cut = await steady_load(shop.url, 2.5)
    finally:
        await set_faults(str(bad["address"]), error_rate=0.0)
    bad_id = str(bad["instance_id"])
    # Open: only the odd half-open probe reaches it.
    assert cut.upstreams[bad_id] <= 6, cut.upstreams
    assert cut.statuses[200] >= 0.98 * sum(cut.statuses.values()), cut.statuses
    await asyncio.sleep(3.5)  # open_s is 3 s: probes now succeed and it closes
    back = await steady_load(shop.url, 4.0)
    assert back.upstreams[bad_id] > 0.1 * sum(back.upstreams.values()), back.upstreams
    assert set(back.statuses) == {200}


async def test_a_draining_replica_finishes_its_work_and_fails_nothing(shop: Shop) -> None:
    """SIGTERM: readiness fails, it deregisters, in-flight requests finish, then it exits."""
    victim = (await wait_for_replicas(shop))[1]
    await set_faults(str(victim["address"]), latency_ms=200)  # so requests are in flight

    async def drain_soon() -> None:
        await asyncio.sleep(1.0)  # under load a while first: it drains requests in flight
        os.kill(int(victim["pid"]), signal.SIGTERM)  # type: ignore[call-overload]

    load = await steady_load(shop.url, 4.0, during=drain_soon())
    assert set(load.statuses) == {200}, load.statuses
    assert load.upstreams[str(victim["instance_id"])] > 0  # it did serve before draining


async def test_a_customer_cancels_a_pending_order_and_everything_is_undone(shop: Shop) -> None:
    """Payments' provider is slowed so the order is still PENDING when its owner cancels it.

    Only the provider: payments itself answers tokenize within its 0.75 s per try.
    """
    [payments] = catalog_instances(shop, "payments")
    async with aiohttp.ClientSession() as session:
        api = Api(session, shop.url)
        await api.signup()
        before = await api.stock("OUT-005")
        await set_faults(str(payments["address"]), "provider", latency_ms=1500)
        try:
            status, accepted, _ = await api.request(
                "POST", "/orders", order_body(sku="OUT-005"), headers={"idempotency-key": "c1"}
            )
            assert status == 202
            status, pending, _ = await api.request("POST", f"/orders/{accepted['id']}/cancel")
            assert status == 202
            assert pending["status"] == "PENDING"
            order = await api.settled(accepted["id"], within_s=20)
        finally:
            await set_faults(str(payments["address"]), "provider", latency_ms=0)
        assert (order["status"], order["cancel_reason"]) == ("CANCELLED", "CUSTOMER_CANCELLED")
        assert order["payment"] is None or order["payment"]["status"] in ("VOIDED", "DECLINED")
        assert await api.stock("OUT-005") == before
        status, again, _ = await api.request("POST", f"/orders/{accepted['id']}/cancel")
        assert (status, again["status"]) == (202, "CANCELLED")  # cancelling twice changes nothing
        status, done, _ = await api.request(
            "POST", "/orders", order_body(sku="OUT-005"), headers={"idempotency-key": "c2"}
        )
        confirmed = await api.settled(done["id"])
        assert confirmed["status"] == "CONFIRMED"
        status, _, _ = await api.request("POST", f"/orders/{done['id']}/cancel")
        assert status == 409
