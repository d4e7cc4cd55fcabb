"""The shop across lab hosts (issue 24): `meshop lab up`, a checkout, a cut host, a killed NATS node.

Four hosts (network namespaces): a 3-node NATS JetStream cluster, PostgreSQL on a host of
its own, every service twice on different hosts, each process as in a container. Bounded:
the lab's start (~25 s here), a few checkouts before and during each fault, and its stop.
Needs root; CI runs as root, so there it fails instead of skipping.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from meshop.lab.hosts import Host, Hosts, can_create
from meshop.lab.shop import LabState, alive

pytestmark = [pytest.mark.system, pytest.mark.timeout(600)]

MESHOP = str(Path(sys.executable).with_name("meshop"))
CARD = {"card_number": "4242424242424242", "exp_month": 12, "exp_year": 2031, "cvc": "123"}
ADDRESS = {"name": "Ada", "line1": "1 Loop Road", "city": "Springfield", "postal_code": "12345", "country": "US"}
#: The registry's TTL (2.25 s) plus the breaker's and health checks' windows, generously.
GONE_WITHIN_S = 15.0


def meshop(*args: str, timeout_s: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MESHOP, *args], capture_output=True, text=True, timeout=timeout_s, check=False)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabState]:
    if not can_create():
        if os.environ.get("CI"):
            pytest.fail("CI runs as root: the lab must start there")
        pytest.skip("the lab makes network namespaces: run as root")
    directory = tmp_path_factory.mktemp("lab")
    started = time.monotonic()
    up = meshop("lab", "up", "--dir", str(directory))
    state = LabState.load(directory) if (directory / "lab.json").exists() else None
    try:
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        assert state is not None
        print(f"lab up in {time.monotonic() - started:.1f} s\n{up.stdout}")
        yield state
    finally:
        down = meshop("lab", "down", "--dir", str(directory), timeout_s=120)
        assert down.returncode == 0 or state is None, down.stdout + down.stderr
        if state is not None:
            left = [p for p in state.processes if alive(p.pid)]
            assert left == [], f"still running after lab down: {left}"
            namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
            assert f"meshop-{state.lab_id}-" not in namespaces


def host_of(state: LabState, name: str) -> Host:
    return state.lab_hosts().host(name)


def processes_on(state: LabState, host: str) -> list[str]:
    return [p.name for p in state.processes if p.host == host]


class Customer:
    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session, self.url, self.token = session, url + "/api", ""

    async def send(self, method: str, path: str, body: Any = None, **headers: str) -> tuple[int, dict[str, Any]]:
        if self.token:
            headers["authorization"] = f"Bearer {self.token}"
        async with self.session.request(method, self.url + path, json=body, headers=headers) as resp:
            return resp.status, await resp.json(content_type=None) or {}

    async def sign_up(self, within_s: float = 60.0) -> None:
        """Register and log in, each sent again while the shop answers 503 (as `check_out`
        does, as a client of any shop would). A register that went through before a 503 is
        409 the second time."""
        account = {"email": f"{uuid.uuid4().hex[:10]}@example.com", "password": "correct horse", "name": "Ada"}
        deadline = time.monotonic() + within_s
        for path, done in (("/users/register", {201, 409}), ("/users/login", {200})):
            while (answer := await self.send("POST", path, account))[0] not in done:
                assert answer[0] == 503, (path, answer)
                assert time.monotonic() < deadline, f"{path} answered 503 for a minute"
                await asyncio.sleep(0.5)
        self.token = answer[1]["access_token"]

    async def check_out(self, within_s: float = 60.0) -> dict[str, Any]:
        """One order, retried with its idempotency key while the shop answers 503; its final state."""
        body = {"items": [{"sku": "KIT-001", "quantity": 1}], "payment": CARD, "shipping_address": ADDRESS}
        key = uuid.uuid4().hex
        deadline = time.monotonic() + within_s
        while True:
            status, accepted = await self.send("POST", "/orders", body, **{"idempotency-key": key})
            if status in (200, 202):
                break
            assert status == 503, (status, accepted)  # unavailable for now: the same order again
            assert time.monotonic() < deadline, "the shop answered 503 for a minute"
            await asyncio.sleep(0.5)
        while True:
            status, order = await self.send("GET", f"/orders/{accepted['id']}")
            if status == 200 and order["status"] != "PENDING":
                return order
            assert time.monotonic() < deadline, f"order {accepted['id']} not settled: {status} {order}"
            await asyncio.sleep(0.2)


async def checkouts(url: str, count: int) -> list[str]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
        customer = Customer(session, url)
        await customer.sign_up()
        return [(await customer.check_out())["status"] for _ in range(count)]


def instances(state: LabState) -> list[dict[str, Any]]:
    """The gateway's view, read from another host with the scrape token (as /metrics)."""
    token = (Path(state.directory) / "scrape-token").read_text().strip()
    request = urllib.request.Request(state.gateway_urls[0] + "/_meshop/instances")
    request.add_header("authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=5) as resp:
        rows: list[dict[str, Any]] = json.load(resp)
        return rows


def test_every_process_runs_apart_with_its_hosts_address_and_zone(lab: LabState) -> None:
    rows = instances(lab)
    by_address = {row["address"].rpartition(":")[0] for row in rows}
    hosts = {h["address"]: h for h in lab.hosts}
    assert by_address <= set(hosts), f"an instance advertises an address that is no lab host's: {by_address}"
    for service in ("users", "catalog", "inventory", "payments", "shipping", "orders"):
        mine = [row for row in rows if row["service"] == service]
        assert len({row["address"].rpartition(":")[0] for row in mine}) == 2, (service, mine)
        for row in mine:
            assert row["zone"] == hosts[row["address"].rpartition(":")[0]]["zone"]
    status = meshop("status", "--data-dir", lab.directory, "--json", timeout_s=30)
    assert status.returncode == 0, status.stderr
    assert all(row["health"] == "ready" for row in json.loads(status.stdout))


SERVICES = ("users", "catalog", "inventory", "payments", "shipping", "orders")
#: Run inside a lab host: the operator's console, signed in as the admin, through the
#: gateway; its overview read until it shows every service (it scrapes on a beat).
CONSOLE_FROM_A_HOST = """
import json, sys, time, urllib.request
url, password, services = sys.argv[1], sys.argv[2], set(sys.argv[3].split(","))
login = urllib.request.Request(url + "/api/users/login", method="POST", headers={"content-type": "application/json"},
    data=json.dumps({"email": "admin@meshop.local", "password": password}).encode())
token = json.load(urllib.request.urlopen(login, timeout=10))["access_token"]
page = urllib.request.urlopen(url + "/console", timeout=10).read()
assert b"console.js" in page, page[:200]
deadline = time.monotonic() + 30
while True:
    request = urllib.request.Request(url + "/api/console/overview", headers={"authorization": "Bearer " + token})
    overview = json.load(urllib.request.urlopen(request, timeout=10))
    if services <= {i["service"] for i in overview["instances"]} or time.monotonic() > deadline:
        break
    time.sleep(1)
print(json.dumps(overview))
"""


def test_the_console_works_from_every_host_and_shows_hosts_and_zones(lab: LabState) -> None:
    password = (Path(lab.directory) / "admin-password").read_text().strip()
    gateway_host = next(p.host for p in lab.processes if p.name.startswith("gateway-"))
    zones = {h["address"]: h["zone"] for h in lab.hosts}
    for host in [h for h in lab.lab_hosts().hosts if h.name != gateway_host]:
        run = subprocess.run(
            [*host.exec_prefix, sys.executable, "-c", CONSOLE_FROM_A_HOST, lab.gateway_urls[0], password,
             ",".join(SERVICES)],
            capture_output=True, text=True, timeout=90, check=False,
        )  # fmt: skip
        assert run.returncode == 0, (host.name, run.stderr[-2000:])
        seen = json.loads(run.stdout)["instances"]
        assert set(SERVICES) <= {i["service"] for i in seen}, (host.name, seen)
        for i in seen:
            assert i["zone"] == zones[i["address"].rpartition(":")[0]], (host.name, i)
        assert len({zones[i["address"].rpartition(":")[0]] for i in seen}) == 2  # both zones shown


def test_the_registry_and_the_event_streams_have_three_replicas(lab: LabState) -> None:
    nats = next(p for p in lab.processes if p.name == "nats-n1")
    with urllib.request.urlopen(f"http://{nats.address}:8222/jsz?streams=true&config=true", timeout=5) as resp:
        jsz = json.load(resp)
    streams = {
        s["name"]: s["config"]["num_replicas"]
        for account in jsz["account_details"]
        for s in account.get("stream_detail", [])
    }
    assert streams.get("KV_meshop_registry") == 3, streams
    assert [name for name, replicas in streams.items() if replicas != 3] == [], streams


def test_a_checkout_crosses_the_hosts(lab: LabState) -> None:
    assert asyncio.run(checkouts(lab.gateway_urls[0], 2)) == ["CONFIRMED", "CONFIRMED"]


def test_a_cut_host_is_no_longer_sent_to_and_the_shop_keeps_selling(lab: LabState) -> None:
    """h3 holds a NATS node and a replica of catalog, inventory and orders. The gateway stops
    sending to its instances (health checks, outlier ejection, breakers); its view drops
    them once the registry expires them, which waits while the cluster re-elects its
    leaders (decision 0025)."""
    hosts: Hosts = lab.lab_hosts()
    h3 = host_of(lab, "h3")
    assert "nats-n3" in processes_on(lab, "h3")
    url = lab.gateway_urls[0]

    def on_h3(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [row for row in rows if row["address"].startswith(h3.address + ":")]

    hosts.cut(h3)
    try:
        cut_at = time.monotonic()
        while any(row["routable"] for row in on_h3(instances(lab))):
            assert time.monotonic() - cut_at < GONE_WITHIN_S, "the gateway still sends to the cut host"
            time.sleep(0.25)
        print(f"the gateway stopped sending to h3 {time.monotonic() - cut_at:.2f} s after the cut")
        assert asyncio.run(checkouts(url, 3)) == ["CONFIRMED"] * 3
        while (left := on_h3(instances(lab))) and time.monotonic() - cut_at < 60:
            time.sleep(0.25)
        print(f"h3's instances {'still in' if left else 'out of'} the gateway's view {time.monotonic() - cut_at:.2f} s")
    finally:
        hosts.heal(h3)
    healed_at = time.monotonic()
    while not any(row["routable"] for row in on_h3(instances(lab))):
        assert time.monotonic() - healed_at < 60, "h3's instances were not sent to again after the heal"
        time.sleep(0.5)
    assert asyncio.run(checkouts(url, 1)) == ["CONFIRMED"]


def test_a_killed_nats_node_fails_no_checkout(lab: LabState) -> None:
    node = next(p for p in lab.processes if p.name == "nats-n2")
    os.kill(node.pid, signal.SIGKILL)
    assert asyncio.run(checkouts(lab.gateway_urls[0], 3)) == ["CONFIRMED"] * 3
