"""Outbox latency: from an event's commit to its publication on NATS, on an idle shop.

Starts its own `meshop up` (fresh data dir, free port) and subscribes to every event
subject (`meshop.events.>`) on the shop's NATS. Then, one at a time with short pauses
between, an admin updates a product (catalog's ProductUpdated) and a customer checks out
(OrderPlaced and OrderConfirmed from orders, StockReserved and StockCommitted from
inventory, PaymentAuthorized and PaymentCaptured from payments, ShipmentCreated from
shipping). An event's latency runs from its `occurred_at`, stamped inside its transaction
just before the commit, to its arrival at the subscriber (one machine, one clock): an
upper bound of commit -> published. Target: p99 <= 10 ms.

The baseline, measured in the same run, is the same shop with `MESHOP_OUTBOX_WAKE=false`:
only the relay's sweep (every second) publishes, as it did for every service but orders
before the mesh woke the relay on commit. The two shops start together and are measured
one after the other.

    python bench/outbox_latency.py --rounds 50
    python bench/outbox_latency.py --smoke     # its shortest mode: a few rounds, the same table
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import tempfile
import time
import uuid
from collections import defaultdict
from pathlib import Path

import aiohttp
import nats
from nats.aio.msg import Msg

from _common import pct, table
from checkout import ADDRESS, SKUS, signup, start_shop
from meshop.runtime.connection import login_of, nats_url_of

ADMIN_EMAIL = "admin@meshop.local"
TARGET_P99_MS = 10.0
#: Shop settings, and how long to wait after the last checkout for its last events (all
#: committed by the time it is CONFIRMED): longer than a sweep for the baseline.
WAKE = ({"MESHOP_OUTBOX_WAKE": "true"}, 0.2)
SWEEP_ONLY = ({"MESHOP_OUTBOX_WAKE": "false"}, 1.5)


class Arrivals:
    """Each event's latency, by "<service> <type>", from events that occurred since `since`."""

    def __init__(self, since: float) -> None:
        self.since = since
        self.latencies: dict[str, list[float]] = defaultdict(list)

    async def on_event(self, msg: Msg) -> None:
        arrived = time.time()
        event = json.loads(msg.data)
        if event["occurred_at"] >= self.since:  # not one a service emitted while starting
            self.latencies[f"{msg.subject.split('.')[2]} {event['type']}"].append(arrived - event["occurred_at"])


async def admin_token(session: aiohttp.ClientSession, url: str, data_dir: Path) -> str:
    password = (data_dir / "admin-password").read_text().strip()
    async with session.post(url + "/api/users/login", json={"email": ADMIN_EMAIL, "password": password}) as resp:
        assert resp.status == 200, await resp.text()
        return str((await resp.json())["access_token"])


async def update_product(session: aiohttp.ClientSession, url: str, token: str, product: dict[str, object]) -> None:
    price = int(product["price_cents"]) + 1  # type: ignore[call-overload]
    product["price_cents"] = price
    async with session.patch(
        f"{url}/api/catalog/admin/products/{product['id']}",
        json={"price_cents": price},
        headers={"authorization": f"Bearer {token}"},
    ) as resp:
        assert resp.status == 200, await resp.text()


async def checkout(session: aiohttp.ClientSession, url: str, token: str, sku: str) -> None:
    headers = {"authorization": f"Bearer {token}"}
    body = {
        "items": [{"sku": sku, "quantity": 1}],
        "payment": {"card_number": "4242424242424242", "exp_month": 12, "exp_year": 2031, "cvc": "123"},
        "shipping_address": ADDRESS,
    }
    async with session.post(
        url + "/api/orders", json=body, headers={**headers, "idempotency-key": uuid.uuid4().hex}
    ) as resp:
        assert resp.status == 202, await resp.text()
        order_id = (await resp.json())["id"]
    status, order, deadline = "PENDING", {}, time.monotonic() + 60
    while status == "PENDING":  # long poll: answered when the checkout ends
        if time.monotonic() > deadline:  # say so, rather than outlive the caller's timeout
            raise RuntimeError(f"{url}: order {order_id} still PENDING after 60 s: {order}")
        async with session.get(f"{url}/api/orders/{order_id}?wait_s=8", headers=headers) as resp:
            order = await resp.json()
            status = order["status"]
    assert status == "CONFIRMED", order


async def measure(url: str, data_dir: Path, rounds: int, seed: int, last_s: float) -> dict[str, list[float]]:
    """Latencies of the events of `rounds` product updates and checkouts, one at a time."""
    # As `meshop events tail` does: the shop's NATS admits only its users (docs/decisions/0019).
    nc = await nats.connect(nats_url_of(data_dir), **login_of(data_dir, "events").options())
    arrivals = Arrivals(since=time.time())
    await nc.subscribe("meshop.events.>", cb=arrivals.on_event)
    # Pauses of random length: the baseline's sweep then falls anywhere between commits.
    pause = random.Random(seed).uniform
    try:
        async with aiohttp.ClientSession() as session:
            admin = await admin_token(session, url, data_dir)
            customer = await signup(session, url)
            async with session.get(url + "/api/catalog/products?limit=20") as resp:
                products = (await resp.json())["items"]
            for n in range(rounds):
                await update_product(session, url, admin, products[n % len(products)])
                await asyncio.sleep(pause(0.02, 0.1))
                await checkout(session, url, customer, SKUS[n % len(SKUS)])
                await asyncio.sleep(pause(0.02, 0.1))
        await asyncio.sleep(last_s)
    finally:
        await nc.close()
    return arrivals.latencies


def stop(process: subprocess.Popen[bytes]) -> None:
    os.killpg(process.pid, signal.SIGTERM)
    process.wait(30)


async def run(rounds: int, baseline: bool) -> None:
    modes = {"wake": WAKE, "sweep only": SWEEP_ONLY} if baseline else {"wake": WAKE}
    with tempfile.TemporaryDirectory(prefix="meshop-bench-outbox-") as tmp:
        dirs = {mode: Path(tmp) / mode.replace(" ", "-") for mode in modes}
        started = time.monotonic()
        # One after the other: a shop picks its gateway's port before it binds it, and a
        # second shop starting meanwhile could take that port for its NATS.
        shops = [await asyncio.to_thread(start_shop, dirs[m], env) for m, (env, _) in modes.items()]
        try:
            print(f"meshop up: {len(shops)} shop(s) ready in {time.monotonic() - started:.1f}s")
            results = {}
            for (mode, (_, last_s)), (_, url, _) in zip(modes.items(), shops, strict=True):
                results[mode] = await measure(url, dirs[mode], rounds, seed=rounds, last_s=last_s)
        finally:
            for process, _, _ in shops:
                stop(process)
    report(results, rounds)


def report(results: dict[str, dict[str, list[float]]], rounds: int) -> None:
    wake, sweep = results["wake"], results.get("sweep only", {})
    kinds = sorted(wake, key=lambda k: (k != "catalog ProductUpdated", k))
    everything = {"all events": [s for k in kinds for s in wake[k]]}
    rows = []
    for name, samples in [*((k, wake[k]) for k in kinds), *everything.items()]:
        base = [s for k in sweep for s in sweep[k]] if name == "all events" else sweep.get(name, [])
        p50, p99 = pct(samples, 0.5) * 1000, pct(samples, 0.99) * 1000
        base_p50, base_p99 = pct(base, 0.5) * 1000, pct(base, 0.99) * 1000
        ratio = f"{base_p99 / p99:.0f}x" if base else "-"
        rows.append((name, len(samples), p50, p99, base_p50 if base else "-", base_p99 if base else "-", ratio))
    table(
        f"commit -> published on an idle shop, {rounds} product updates and {rounds} checkouts (ms)",
        rows,
        ["events", "n", "p50", "p99", "sweep-only p50", "sweep-only p99", "p99 sweep-only/wake"],
    )
    p99 = pct(everything["all events"], 0.99) * 1000
    verdict = "met" if p99 <= TARGET_P99_MS else "NOT met"
    print(f"\ntarget p99 <= {TARGET_P99_MS:.0f} ms: {verdict} (p99 {p99:.2f} ms over every event)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=50, help="product updates and checkouts each (default 50)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the sweep-only shop")
    parser.add_argument("--smoke", action="store_true", help="shortest mode: 3 rounds, the same table")
    args = parser.parse_args()
    asyncio.run(run(3 if args.smoke else args.rounds, baseline=not args.no_baseline))


if __name__ == "__main__":
    main()
