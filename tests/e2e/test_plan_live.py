"""`meshop plan --rps N` measures a running shop under load and sizes each service from it."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.e2e.api import Api
from tests.e2e.conftest import Shop

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


@pytest.fixture
async def api(shop: Shop) -> AsyncIterator[Api]:
    async with aiohttp.ClientSession() as session:
        yield Api(session, shop.url)


def _plan(shop: Shop, *args: str) -> dict[str, Any]:
    done = subprocess.run(
        # Through the gateway's URL: `analyze --live` already covers finding processes from the data dir.
        [sys.executable, "-m", "meshop", "plan", *args, "--json", "--url", shop.url],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    printed: dict[str, Any] = json.loads(done.stdout)
    return printed


def test_plan_says_what_it_measures_and_what_it_found_without_traffic(shop: Shop) -> None:
    """Nothing puts traffic on the (shared) shop while it measures: the tests before this one have finished."""
    planning = subprocess.Popen(
        [sys.executable, "-m", "meshop", "plan", "--rps", "10", "--window", "4", "--url", shop.url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert planning.stderr is not None
        said = planning.stderr.readline()
        assert planning.poll() is None  # said while it measures, not after
        out, err = planning.communicate(timeout=30)
    finally:
        planning.kill()
    assert re.fullmatch(r"measuring the running shop \(\d+ processes\) for 4 s…\n", said), said
    assert (planning.returncode, out) == (1, "")
    assert "no traffic measured at gateway in " in err
    assert " instances of 8 services measured" in err
    assert f"bench/checkout.py --url {shop.url}" in err
    assert "Traceback" not in err


async def test_plan_sizes_the_running_shop_from_the_traffic_it_measured(api: Api, shop: Shop) -> None:
    measuring = asyncio.create_task(asyncio.to_thread(_plan, shop, "--rps", "400", "--window", "3"))

    async def customer() -> None:
        # Every query is new, so the gateway's cache does not answer it; and ~100 req/s in all
        # stays under its per-address rate limit (200/s), so the gateway does not either.
        while not measuring.done():
            status, _, _ = await api.request("GET", f"/catalog/products?limit=5&q={uuid.uuid4().hex[:6]}")
            assert status == 200
            await asyncio.sleep(0.04)

    await asyncio.gather(*(customer() for _ in range(4)))
    printed = await measuring
    rows = {row["service"]: row for row in printed["plan"]["services"]}
    assert printed["plan"]["headroom"] == 0.3

    gateway, catalog = rows["gateway"], rows["catalog"]
    assert gateway["share"] == 1
    assert gateway["per_instance_rate"] > 5
    assert 0 < gateway["utilisation"] < 1.5
    assert gateway["replicas"] >= 1
    assert gateway["concurrency"] == pytest.approx(gateway["planned_rate"] * gateway["planned_time_s"])
    assert gateway["replicas"] * gateway["planned_rate"] == pytest.approx(400)
    # One catalog request per gateway request (both scrapes see it, a few milliseconds apart).
    assert catalog["share"] == pytest.approx(1, abs=0.15)
    assert catalog["replicas"] >= 1
    assert catalog["time_in_service_s"] < gateway["time_in_service_s"]  # the gateway's W holds catalog's
    assert rows["orders"]["replicas"] is None
    assert rows["orders"]["note"] == "no traffic measured"
