"""One checkout is one trace: every hop's span, from the gateway to the events' consumers.

The test listens on the span stream of a running shop (what the console listens to) and
rebuilds the checkout's trace from the spans the processes published.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import aiohttp
import msgspec
import nats
import pytest

from meshop.mesh.telemetry import tracecontext
from meshop.mesh.telemetry.tracing import SPANS_SUBJECT, SpanRecord
from meshop.runtime.connection import login_of, nats_url_of
from tests.e2e.api import Api, order_body
from tests.e2e.conftest import Shop

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


@pytest.fixture
async def api(shop: Shop) -> AsyncIterator[Api]:
    async with aiohttp.ClientSession() as session:
        yield Api(session, shop.url)


async def test_a_checkout_is_one_trace_with_every_hop(api: Api, shop: Shop) -> None:
    # as the console: only it reads spans
    nc = await nats.connect(nats_url_of(shop.data_dir), **login_of(shop.data_dir, "console").options())
    spans: list[SpanRecord] = []

    async def collect(msg: nats.aio.msg.Msg) -> None:
        spans.extend(msgspec.msgpack.decode(msg.data, type=list[SpanRecord]))

    await nc.subscribe(SPANS_SUBJECT, cb=collect)
    try:
        await api.signup()
        traceparent = tracecontext.start()
        trace_id = tracecontext.trace_id(traceparent)
        headers = {"idempotency-key": uuid.uuid4().hex, tracecontext.HEADER: traceparent}
        status, accepted, _ = await api.request("POST", "/orders", order_body(), headers=headers)
        assert status == 202
        _, order, _ = await api.request("GET", f"/orders/{accepted['id']}?wait_s=8")
        assert order["status"] == "CONFIRMED"

        def mine() -> list[SpanRecord]:
            return [s for s in spans if s.trace_id == trace_id]

        wanted = {"consume OrderConfirmed", "saga checkout commit"}
        every_service = {"gateway", "orders", "inventory", "payments", "shipping", "users"}

        def complete(trace: list[SpanRecord]) -> bool:
            """Each process publishes its spans every 0.25 s: the last event's are not the last to come."""
            ids = {s.span_id for s in trace} | {traceparent[36:52]}
            return (
                wanted <= {s.name for s in trace}
                and every_service <= {s.service for s in trace}
                and all(s.parent_id in ids for s in trace)
            )

        for _ in range(100):
            if complete(mine()):
                break
            await asyncio.sleep(0.1)
        trace = mine()
    finally:
        await nc.close()

    names = {s.name for s in trace}
    services = {s.service for s in trace}
    assert every_service <= services, services
    # the gateway's span is the root, named after the route template
    [gateway] = [s for s in trace if s.service == "gateway" and s.kind == "server" and s.name.startswith("POST ")]
    assert gateway.name == "POST /api/orders"
    assert gateway.attributes["http.route"] == "/api/orders"
    assert gateway.attributes["http.response.status_code"] == 202
    assert gateway.parent_id == traceparent[36:52]
    # the order service's handler ("POST /": its create operation), its calls and the saga's steps and their calls
    steps = {f"saga checkout {step}" for step in ("reserve", "authorize", "ship", "capture", "commit")}
    calls = {"inventory.reserve", "payments.authorize", "shipping.create", "payments.capture", "inventory.commit"}
    assert {"POST /", *steps, *calls} <= names, sorted(names)
    # events: published by the relays and applied by a consumer, in the same trace
    assert any(s.kind == "producer" and s.name == "publish OrderConfirmed" for s in trace), names
    assert any(s.kind == "consumer" and s.name == "consume OrderConfirmed" for s in trace), names
    # one tree: every span's parent is in the trace, but the root's parent (the client's span)
    ids = {s.span_id for s in trace}
    orphans = [s for s in trace if s.parent_id not in ids]
    assert {s.parent_id for s in orphans} == {traceparent[36:52]}, [(s.service, s.name) for s in orphans]
    assert not any(s.error for s in trace), [(s.service, s.name) for s in trace if s.error]
    # the orders spans carry the order id (the console finds the trace by it)
    assert any(s.attributes.get("order.id") == order["id"] for s in trace)
