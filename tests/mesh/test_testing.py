"""The test kit users get with the mesh: a clock moved by hand, waiting on a condition,
services in the test's process called as a given caller."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest

from meshop.contracts import inventory
from meshop.contracts.orders import ORDER_CONFIRMED, ORDER_PLACED
from meshop.contracts.seed import seed_stock
from meshop.mesh import (
    Access,
    Api,
    ConfigError,
    EventType,
    Forbidden,
    NotFound,
    Operation,
    RequestContext,
    Runtime,
    ServiceDefinition,
    TransportError,
    Unauthorized,
)
from meshop.mesh.client.client import ServiceClient
from meshop.mesh.registry.base import Instance
from meshop.mesh.resilience import BreakerState, CircuitBreaker
from meshop.mesh.resilience.policy import BreakerPolicy
from meshop.mesh.testing import FakeClock, MemoryExchange, TestMesh, eventually
from meshop.mesh.transport.exchange import Request
from meshop.services.inventory import app as inventory_app
from meshop.services.inventory import store as inventory_store
from meshop.services.payments import app as payments_app
from meshop.services.payments import providers as payments_providers


async def test_a_fake_clock_moves_only_when_told_and_never_back() -> None:
    clock = FakeClock(50.0)
    assert clock() == 50.0
    clock.advance(1.5)
    await clock.sleep(0.5)
    assert clock() == 52.0
    with pytest.raises(ValueError, match="does not go back"):
        clock.advance(-1)


def test_a_fake_clock_drives_the_mesh_where_time_is_behaviour() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(BreakerPolicy(minimum_calls=2, window_size=2, open_s=5.0), clock=clock)
    for _ in range(2):
        breaker.record(failed=True, duration_s=0.01)
    assert breaker.state is BreakerState.OPEN
    clock.advance(5.0)
    assert breaker.allow()
    assert breaker.state is BreakerState.HALF_OPEN


async def test_eventually_gives_the_first_truthy_answer_of_a_plain_or_async_check() -> None:
    answers = iter([None, [], ["a"]])
    assert await eventually(lambda: next(answers), poll_s=0) == ["a"]

    calls = 0

    async def ready() -> int:
        nonlocal calls
        calls += 1
        return calls if calls == 3 else 0

    assert await eventually(ready, poll_s=0) == 3


async def test_eventually_names_what_was_not_true_in_time() -> None:
    with pytest.raises(AssertionError, match=r"the stock was not true within 0\.05 s"):
        await eventually(lambda: False, within_s=0.05, what="the stock")


# --- TestMesh: services in the test's process, called as a given caller -------------------


async def test_a_service_runs_in_process_on_its_migrated_database(tmp_path: Path) -> None:
    async with TestMesh(tmp_path) as mesh:
        await mesh.start(inventory_app.DEFINITION)
        sku = next(iter(seed_stock()))
        stock = await mesh.call(inventory.GET_STOCK, path_params={"sku": sku})
        assert (stock.sku, stock.available, stock.reserved) == (sku, seed_stock()[sku], 0)
        with pytest.raises(NotFound):
            await mesh.call(inventory.GET_STOCK, path_params={"sku": "NO-SUCH-SKU"})


async def test_an_internal_operation_answers_only_the_callers_its_contract_lists(tmp_path: Path) -> None:
    sku = next(iter(seed_stock()))
    body = inventory.ReserveRequest(order_id="o1", items=[inventory.Line(sku=sku, quantity=2)])
    async with TestMesh(tmp_path) as mesh:
        service = await mesh.start(inventory_app.DEFINITION)
        with pytest.raises(Unauthorized):  # no identity at all
            await mesh.call(inventory.RESERVE, body, idempotency_key="o1:reserve")
        with pytest.raises(Forbidden):  # a service the contract does not list
            await mesh.call(inventory.RESERVE, body, idempotency_key="o1:reserve", caller="shipping")
        reserved = await mesh.call(inventory.RESERVE, body, idempotency_key="o1:reserve", caller="orders")
        again = await mesh.call(inventory.RESERVE, body, idempotency_key="o1:reserve", caller="orders")
        assert reserved.status == "RESERVED"
        assert again.id == reserved.id
        async with service.database.read() as conn:
            assert (await inventory_store.stock_of(conn, [sku]))[sku].reserved == 2


async def test_the_memory_exchange_answers_a_path_no_operation_serves_with_a_problem(tmp_path: Path) -> None:
    async with TestMesh(tmp_path) as mesh:
        service = await mesh.start(inventory_app.DEFINITION)
        request = Request("GET", "/nothing/here", None)
        reply = await mesh.exchange.exchange(service.instance, request, {}, 1.0)
        assert reply.status == 404
        assert reply.headers["content-type"] == "application/problem+json"


async def test_the_memory_exchange_fails_a_try_to_an_instance_it_does_not_serve_as_never_sent() -> None:
    gone = Instance(service="catalog", instance_id="gone", address="memory", port=0, pid=0)
    with pytest.raises(TransportError) as raised:
        await MemoryExchange().exchange(gone, Request("GET", "/products", None), {}, 1.0)
    assert raised.value.sent is False


async def test_a_slow_endpoint_times_out_through_the_client_chain(tmp_path: Path) -> None:
    api = Api("slow")

    @api.implement(_SLOW)
    async def slow(_ctx: RequestContext, _body: None) -> None:
        await asyncio.sleep(5)

    async with TestMesh(tmp_path) as mesh:
        instance = Instance(service="slow", instance_id="slow-1", address="memory", port=0, pid=0)
        mesh.exchange.serve(instance, api)
        await mesh.registry.register(instance)
        started = time.monotonic()
        with pytest.raises(TransportError, match="did not answer"):
            await mesh.client().call(_SLOW, timeout_s=0.05)
        assert time.monotonic() - started < 2.0


_SLOW: Operation[None, None] = Operation("slow", "wait", "GET", "/wait", None, None, Access.PUBLIC, idempotent=True)


async def test_a_service_with_adapters_gets_the_ones_its_test_injects(tmp_path: Path) -> None:
    """The kit builds adapters the one way a process does: from the definition's factory."""
    simulated = payments_providers.SimulatedProvider(latency_s=0.0, failure_rate=0.0)
    definition = dataclasses.replace(
        payments_app.DEFINITION, adapters=lambda _settings: payments_app.Adapters(provider=simulated)
    )
    async with TestMesh(tmp_path) as mesh:
        service = await mesh.start(definition)
        assert service.runtime.adapter(payments_app.Adapters).provider is simulated


async def test_a_started_service_also_serves_http_to_the_callers_its_contract_lists(tmp_path: Path) -> None:
    """Real HTTP for what goes over the wire; `identity_headers` is what a caller's client sends."""
    sku = next(iter(seed_stock()))
    body = {"order_id": "o1", "items": [{"sku": sku, "quantity": 2}]}
    async with TestMesh(tmp_path) as mesh:
        service = await mesh.start(inventory_app.DEFINITION)
        url = await service.serve_http()
        assert await service.serve_http() == url  # one server per service
        answers = []
        async with aiohttp.ClientSession(headers={"idempotency-key": "o1:reserve"}) as session:
            for headers in (
                {},  # no identity
                mesh.identity_headers("shipping", "inventory"),  # a service the contract does not list
                mesh.identity_headers("orders", "payments"),  # orders' identity, for another service
                mesh.identity_headers("orders", "inventory"),
            ):
                async with session.post(url + inventory.RESERVE.path, json=body, headers=headers) as resp:
                    answers.append((resp.status, resp.headers["content-type"]))
        assert answers == [
            (401, "application/problem+json"),
            (403, "application/problem+json"),
            (401, "application/problem+json"),
            (200, "application/json"),
        ]
        async with service.database.read() as conn:  # the HTTP request reached the same database
            assert (await inventory_store.stock_of(conn, [sku]))[sku].reserved == 2
    with pytest.raises(aiohttp.ClientConnectionError):  # the mesh closed its server
        async with aiohttp.ClientSession() as session, session.get(f"{url}/stock/{sku}"):
            pass


async def test_a_service_calls_others_with_the_client_its_test_passes(tmp_path: Path) -> None:
    """A fake stands in for the services it calls; by default it calls through the mesh as itself."""
    fake = cast(ServiceClient, object())

    async def build(runtime: Runtime) -> Api:
        return Api("caller")

    definition = ServiceDefinition(name="caller", build=build)
    async with TestMesh(tmp_path) as mesh:
        assert (await mesh.start(definition, client=fake)).runtime.client is fake
        assert (await mesh.start(definition)).runtime.client is mesh.client(caller="caller")


# --- A consumer runs only as its definition declares it (its NATS user reads only that) ----

ORDER_STATS_EVENTS: list[EventType[Any]] = [ORDER_PLACED, ORDER_CONFIRMED]


@pytest.mark.parametrize(
    ("name", "events", "says"),
    [
        ("order-stats", None, None),  # as declared
        ("order-stats", list(reversed(ORDER_STATS_EVENTS)), None),  # the same events, any order
        ("gossip", None, "does not declare"),
        ("order-stats", ORDER_STATS_EVENTS[:1], "differ from its definition"),
    ],
)
async def test_a_consumer_is_the_one_its_definition_declares(
    tmp_path: Path, name: str, events: list[EventType[Any]] | None, says: str | None
) -> None:
    async def build(runtime: Runtime) -> Api:
        runtime.consume(name, events=events, handler=_ignore)
        return Api("stats")

    definition = ServiceDefinition(name="stats", build=build, consumes={"order-stats": ORDER_STATS_EVENTS})
    async with TestMesh(tmp_path) as mesh:
        if says is None:
            service = await mesh.start(definition)
            assert set(service.runtime.subscriptions["order-stats"].events) == set(ORDER_STATS_EVENTS)
        else:
            with pytest.raises(ConfigError, match=says):
                await mesh.start(definition)


async def test_a_definition_that_declares_no_consumer_runs_none(tmp_path: Path) -> None:
    async def build(runtime: Runtime) -> Api:
        runtime.consume("order-stats", events=ORDER_STATS_EVENTS, handler=_ignore)
        return Api("stats")

    async with TestMesh(tmp_path) as mesh:
        with pytest.raises(ConfigError, match=r"\(consumes: none\)"):
            await mesh.start(ServiceDefinition(name="stats", build=build))


async def _ignore(_conn: object, _event: object) -> None:
    return None
