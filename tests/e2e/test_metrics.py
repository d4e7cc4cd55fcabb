"""/metrics of every process of a running shop: valid for promtool, and the figures agree
with what was done to the shop."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator

import aiohttp
import pytest

from meshop.analysis.samples import parse
from meshop.console import figures
from meshop.console.scraper import Round, Seen
from meshop.mesh.registry import Instance
from tests.e2e.api import Api, order_body, sample
from tests.e2e.conftest import Shop

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


@pytest.fixture
async def api(shop: Shop) -> AsyncIterator[Api]:
    async with aiohttp.ClientSession() as session:
        yield Api(session, shop.url)


def promtool_problems(promtool: str, texts: dict[str, str]) -> dict[str, str]:
    """`promtool check metrics` of each exposition; what it complained about, by service."""
    problems = {}
    for service, text in texts.items():
        checked = subprocess.run(
            [promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False
        )
        if checked.returncode != 0:
            problems[service] = checked.stdout + checked.stderr
    return problems


async def test_every_process_exposes_valid_metrics_that_agree_with_the_traffic(api: Api, shop: Shop) -> None:
    await api.signup()
    status, accepted, _ = await api.request(
        "POST", "/orders", order_body(), headers={"idempotency-key": uuid.uuid4().hex}
    )
    assert status == 202
    _, order, _ = await api.request("GET", f"/orders/{accepted['id']}?wait_s=8")
    assert order["status"] == "CONFIRMED"

    async with api.session.get(shop.url + "/_meshop/instances") as resp:
        instances = await resp.json()
    # Every instance of the services the gateway called: breaker closed, none ejected.
    assert {i["service"] for i in instances if i["routable"]} >= {"users", "orders"}, instances
    assert all(i["routable"] for i in instances if i["service"] in ("users", "orders")), instances
    texts: dict[str, str] = {}
    for instance in instances:
        async with api.session.get(f"http://{instance['address']}/metrics") as resp:
            assert resp.status == 200
            assert resp.headers["content-type"].startswith("text/plain; version=0.0.4")
            texts[instance["service"]] = await resp.text()
    async with api.session.get(shop.url + "/metrics") as resp:
        texts["gateway"] = await resp.text()
    assert set(texts) == {"users", "catalog", "inventory", "orders", "payments", "shipping", "console", "gateway"}

    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing: .ci/run installs Debian's prometheus package")
        pytest.skip("promtool not installed (apt-get install --no-install-recommends prometheus)")
    assert await asyncio.to_thread(promtool_problems, promtool, texts) == {}

    gateway, orders = texts["gateway"], texts["orders"]
    assert sample(gateway, "meshop_http_requests_total", route="/api/orders", method="POST", status="202") >= 1
    assert sample(orders, "meshop_http_requests_total", route="orders.create", status="202") >= 1
    assert sample(orders, "meshop_sagas", saga="checkout", state="completed") >= 1
    assert sample(orders, "meshop_saga_duration_seconds_count", saga="checkout", outcome="completed") >= 1
    assert sample(orders, "meshop_client_calls_total", target="inventory", outcome="2xx") >= 2  # reserve, commit
    assert sample(orders, "meshop_balancer_efficiency", target="inventory", window="total") == 1.0  # one instance
    assert "meshop_outbox_pending_events" in orders
    assert sample(texts["users"], "meshop_consumer_pending_events", consumer="users.order-stats") >= 0
    assert "meshop_consumer_applied_events" in texts["users"]
    assert sample(gateway, "process_resident_memory_bytes") > 10_000_000
    assert re.search(r"^process_cpu_seconds_total \S+", gateway, re.M)

    # The console keeps only the samples its figures read (figures.READ): every figure of
    # these processes is the same as from all their samples (a round with none before: all new).
    def overview(names: frozenset[str] | None) -> object:
        instances = [Instance(service=s, instance_id="1", address="127.0.0.1", port=1, pid=1) for s in texts]
        before = Round(at=0.0, wall=0.0, seen=tuple(Seen(i, "ready", None) for i in instances))
        now = tuple(Seen(i, "ready", parse(texts[i.service], names)) for i in instances)
        return figures.overview([before, Round(at=2.0, wall=2.0, seen=now)], window_s=10, traces={})

    assert overview(figures.READ) == overview(None)
    kept_names = {name for t in texts.values() for name, _, _ in parse(t, figures.READ)}
    assert kept_names <= figures.READ
    assert "meshop_client_call_duration_seconds_bucket" not in kept_names  # the client's buckets: ~40% of all


def _analyze(shop: Shop, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "meshop", "analyze", *args, "--live", "--data-dir", str(shop.data_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


async def test_the_seeds_math_is_computed_live_from_the_running_shop(api: Api, shop: Shop) -> None:
    await api.signup()
    for _ in range(3):
        key = uuid.uuid4().hex
        _, accepted, _ = await api.request("POST", "/orders", order_body(), headers={"idempotency-key": key})
        await api.request("GET", f"/orders/{accepted['id']}?wait_s=8")

    efficiency = await asyncio.to_thread(_analyze, shop, "efficiency")
    assert re.search(r"^orders/\S+ -> inventory: E = 1\.00 ", efficiency, re.M), efficiency
    reliability = await asyncio.to_thread(_analyze, shop, "reliability")
    assert "orders -> payments:" in reliability
    assert "checkout R = 1.0000" in reliability  # a healthy shop: every step's calls succeeded

    async def load() -> None:
        # Paced under the gateway's per-address limit (100/s): requests served, not refused with
        # 429s, and the limit's credit is whole again for the tests after these on the shop.
        deadline = asyncio.get_running_loop().time() + 8  # outlasts the command's start and its 2 s window
        while asyncio.get_running_loop().time() < deadline:
            status, _, _ = await api.request("GET", "/catalog/products?limit=5")
            assert status == 200
            await asyncio.sleep(0.02)

    measuring = asyncio.create_task(asyncio.to_thread(_analyze, shop, "littles-law", "--seconds", "2"))
    await load()
    little = await measuring
    gateway = re.search(r"^gateway: lambda = ([\d.]+)/s, W = ([\d.]+) ms, L = lambda x W = ([\d.]+)", little, re.M)
    assert gateway is not None, little
    rate, w_ms, predicted = (float(g) for g in gateway.groups())
    assert rate > 1
    assert predicted == pytest.approx(rate * w_ms / 1000, rel=0.05, abs=0.002)
