"""Events end to end: trace context in every event of a checkout, the users read model fed
by a consumer, `meshop events tail / dlq / replay`, and poison messages dead-lettered."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import nats
import pytest

from meshop.mesh.events.envelope import Event, event_id
from meshop.mesh.telemetry import tracecontext
from meshop.mesh.testing import eventually
from meshop.runtime.connection import login_of, nats_url_of
from tests.e2e.api import Api, order_body
from tests.e2e.conftest import Shop, start_shop

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

ADMIN_PASSWORD = "events-admin-secret"
CHECKOUT_EVENTS = {
    "OrderPlaced",
    "StockReserved",
    "PaymentAuthorized",
    "ShipmentCreated",
    "PaymentCaptured",
    "StockCommitted",
    "OrderConfirmed",
}


@pytest.fixture(scope="module")
def events_shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shop]:
    env = {"MESHOP_ADMIN_PASSWORD": ADMIN_PASSWORD, "MESHOP_CONSUMER_MAX_DELIVER": "2"}
    running = start_shop(tmp_path_factory.mktemp("events"), env=env)
    yield running
    running.stop()


@pytest.fixture
async def api(events_shop: Shop) -> AsyncIterator[Api]:
    async with aiohttp.ClientSession() as session:
        yield Api(session, events_shop.url)


def meshop(shop: Shop, *args: str) -> list[dict[str, Any]]:
    """Run `meshop ARGS --data-dir <the shop's>`; its JSON lines."""
    done = subprocess.run(
        [sys.executable, "-m", "meshop", *args, "--data-dir", str(shop.data_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"MESHOP_ADMIN_PASSWORD": ADMIN_PASSWORD, "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


async def test_a_checkout_is_one_trace_through_every_event_and_feeds_the_read_model(
    api: Api, events_shop: Shop
) -> None:
    await api.signup()
    traceparent = tracecontext.start()
    headers = {"idempotency-key": uuid.uuid4().hex, tracecontext.HEADER: traceparent}
    status, accepted, _ = await api.request("POST", "/orders", order_body(), headers=headers)
    assert status == 202
    status, order, _ = await api.request("GET", f"/orders/{accepted['id']}?wait_s=8")
    assert order["status"] == "CONFIRMED"

    async def checkout_events() -> list[dict[str, Any]]:
        records = meshop(events_shop, "events", "tail", "--count", "200")
        mine = [r for r in records if r.get("data", {}).get("order_id") == order["id"]]
        return mine if {r["type"] for r in mine} >= CHECKOUT_EVENTS else []

    mine = await eventually(checkout_events, within_s=20, poll_s=0.2)
    assert {r["type"] for r in mine} == CHECKOUT_EVENTS
    # One trace: the id the client sent is in every event, across four services.
    assert {tracecontext.trace_id(r["traceparent"]) for r in mine} == {tracecontext.trace_id(traceparent)}

    async def stats() -> dict[str, Any] | None:
        _, body, _ = await api.request("GET", "/users/me/order-stats")
        return body if body["confirmed"] == 1 else None

    counted = await eventually(stats, within_s=20, poll_s=0.2)
    assert (counted["placed"], counted["confirmed"], counted["cancelled"]) == (1, 1, 0)
    assert counted["spent_cents"] == order["total_cents"]

    # Rebuilding the read model from the stream gives the same figures.
    [result] = meshop(events_shop, "events", "replay", "users.order-stats")
    assert result["name"] == "users.order-stats"
    assert result["replayed"] >= 2
    assert result["failed"] == 0
    _, again, _ = await api.request("GET", "/users/me/order-stats")
    assert again == counted


async def test_poison_events_go_to_the_dead_letter_stream_and_the_consumer_goes_on(api: Api, events_shop: Shop) -> None:
    # as orders: only it may publish its events
    nc = await nats.connect(nats_url_of(events_shop.data_dir), **login_of(events_shop.data_dir, "orders").options())
    try:
        js = nc.jetstream()
        # An OrderConfirmed whose data does not decode (no user_id), and bytes that are no event at all.
        data = {"order_id": "o1", "total_cents": 1}
        bad = Event(id=event_id(), type="OrderConfirmed", schema_version=1, occurred_at=0.0, data=data)
        await js.publish("meshop.events.orders.OrderConfirmed", msgspec.json.encode(bad))
        await js.publish("meshop.events.orders.OrderPlaced", b"\x00 not an event")
    finally:
        await nc.close()

    async def dead() -> list[dict[str, Any]]:
        records = meshop(events_shop, "events", "dlq")
        return records if len(records) >= 2 else []

    records = await eventually(dead, within_s=20, poll_s=0.2)
    by_subject = {r["subject"]: r for r in records}
    unusable = by_subject["meshop.events.orders.OrderConfirmed"]
    assert unusable["consumer"] == "users.order-stats"
    assert unusable["deliveries"] == 1  # never handed to the handler: retrying would not decode it
    assert "missing required field `user_id`" in unusable["error"]
    garbage = by_subject["meshop.events.orders.OrderPlaced"]
    assert garbage["deliveries"] == 1
    assert "undecodable" in garbage["error"]

    # The consumer went on: a new order is still counted.
    await api.signup()
    status, _, _ = await api.request("POST", "/orders", order_body(), headers={"idempotency-key": "k1"})
    assert status == 202

    async def placed() -> bool:
        _, body, _ = await api.request("GET", "/users/me/order-stats")
        return bool(body["placed"] == 1)

    await eventually(placed, within_s=20, poll_s=0.2)


def test_events_commands_explain_a_missing_shop(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "meshop", "events", "tail", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 1
    assert "is `meshop up` running?" in done.stderr
