"""The resilience chain over real sockets: retries, breakers, bulkhead, deadline, fallback.

Then `ServiceClient.start`, the same chain driven by callbacks (the gateway's lane): what it
adds is a try on an idle connection without a task, the hand-over to a task for what must
wait (connecting, a retry's back-off), and one settlement with the call's span and metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import msgspec
import pytest
import structlog
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from meshop.mesh.api.operation import Access, Operation
from meshop.mesh.client.client import Answer, CallOptions, ServiceClient, Unavailable
from meshop.mesh.errors import DeadlineExceeded, ServiceUnavailable, TransportError
from meshop.mesh.headers import DEADLINE_HEADER
from meshop.mesh.registry import Instance, StaticRegistry
from meshop.mesh.resilience import BreakerState, BulkheadFull
from meshop.mesh.resilience.config import Policies
from meshop.mesh.telemetry import tracing
from meshop.mesh.telemetry.metrics import Metrics
from meshop.mesh.testing import eventually
from meshop.mesh.transport.exchange import Reply as HttpReply
from meshop.mesh.transport.http_client import HttpPool
from meshop.mesh.transport.server import HttpServer
from meshop.runtime.nats_server import free_port

pytestmark = pytest.mark.integration


class Reply(msgspec.Struct):
    instance: str
    deadline_ms: int


GET: Operation[None, Reply] = Operation("svc", "get", "GET", "/thing", None, Reply, Access.PUBLIC, idempotent=True)
POST: Operation[dict[str, int], Reply] = Operation("svc", "post", "POST", "/thing", dict, Reply, Access.PUBLIC)  # type: ignore[arg-type]


@dataclass
class Behaviour:
    status: int = 200
    delay_s: float = 0.0
    hits: Counter[str] = field(default_factory=Counter)


def app(name: str, behaviour: Behaviour) -> Starlette:
    async def thing(request: Request) -> Response:
        behaviour.hits[request.method] += 1
        if behaviour.delay_s:
            await asyncio.sleep(behaviour.delay_s)
        if behaviour.status != 200:
            return Response(b"", status_code=behaviour.status, headers={"retry-after": "0"})
        return JSONResponse({"instance": name, "deadline_ms": int(request.headers.get(DEADLINE_HEADER, "-1"))})

    async def ready(_request: Request) -> Response:
        return Response(b"{}") if name != "d" else Response(b"", status_code=503)

    return Starlette(routes=[Route("/thing", thing, methods=["GET", "POST"]), Route("/ready", ready)])


@dataclass
class Cluster:
    registry: StaticRegistry
    behaviours: dict[str, Behaviour]


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    behaviours = {name: Behaviour() for name in ("a", "b", "c")}
    servers = {name: HttpServer(app(name, b), host="127.0.0.1", port=0) for name, b in behaviours.items()}
    registry = StaticRegistry()
    for name, server in servers.items():
        port = await server.start()
        await registry.register(Instance(service="svc", instance_id=name, address="127.0.0.1", port=port, pid=0))
    yield Cluster(registry, behaviours)
    for server in servers.values():
        await server.stop()


def client(registry: StaticRegistry, **default: object) -> ServiceClient:
    tables = {"default": {"balancer": "round_robin", **default}}
    return ServiceClient(registry, policies=Policies(tables))


async def test_a_dead_instance_costs_nothing_the_request_goes_to_another(cluster: Cluster) -> None:
    await cluster.registry.register(
        Instance(service="svc", instance_id="dead", address="127.0.0.1", port=free_port(), pid=0)
    )
    c = client(cluster.registry)
    answers = [await c.call(GET) for _ in range(40)]
    assert {a.instance for a in answers} == {"a", "b", "c"}


async def test_a_non_idempotent_call_without_a_key_is_not_retried_after_a_503(cluster: Cluster) -> None:
    for b in cluster.behaviours.values():
        b.status = 503
    c = client(cluster.registry)
    with pytest.raises(ServiceUnavailable):
        await c.call(POST, {"x": 1})
    assert sum(b.hits["POST"] for b in cluster.behaviours.values()) == 1


async def test_a_503_of_an_idempotent_call_is_retried_on_another_instance(cluster: Cluster) -> None:
    cluster.behaviours["a"].status = 503
    cluster.behaviours["b"].status = 503
    c = client(cluster.registry, retry={"attempts": 3, "backoff_base_s": 0.001})
    answer = await c.call(GET)
    assert answer.instance == "c"
    assert cluster.behaviours["a"].hits["GET"] == 1  # tried once, then another instance
    assert cluster.behaviours["b"].hits["GET"] <= 1


async def test_a_keyed_post_is_retried_too(cluster: Cluster) -> None:
    cluster.behaviours["a"].status = 503
    c = client(cluster.registry, retry={"attempts": 2, "backoff_base_s": 0.001})
    op: Operation[dict[str, int], Reply] = Operation("svc", "post", "POST", "/thing", dict, Reply, requires_key=True)  # type: ignore[arg-type]
    assert (await c.call(op, {"x": 1}, idempotency_key="k1")).instance in {"b", "c"}


async def test_failing_instance_opens_its_breaker_and_leaves_the_balancer(cluster: Cluster) -> None:
    cluster.behaviours["a"].status = 500
    c = client(cluster.registry, breaker={"minimum_calls": 3, "window_size": 5, "open_s": 60})
    for _ in range(30):
        with contextlib.suppress(Exception):
            await c.call(GET)
    assert c.breaker("svc", "a").state is BreakerState.OPEN
    before = cluster.behaviours["a"].hits["GET"]
    for _ in range(20):
        assert (await c.call(GET)).instance in {"b", "c"}
    assert cluster.behaviours["a"].hits["GET"] == before


async def test_when_every_breaker_is_open_calls_fail_fast_locally(cluster: Cluster) -> None:
    for b in cluster.behaviours.values():
        b.status = 500
    c = client(cluster.registry, breaker={"minimum_calls": 2, "window_size": 2, "open_s": 60})
    for _ in range(12):
        with contextlib.suppress(Exception):
            await c.call(GET)
    hits = sum(b.hits["GET"] for b in cluster.behaviours.values())
    with pytest.raises(Unavailable):
        await c.call(GET)
    assert sum(b.hits["GET"] for b in cluster.behaviours.values()) == hits


async def test_a_full_bulkhead_rejects_at_once_without_retrying(cluster: Cluster) -> None:
    for b in cluster.behaviours.values():
        b.delay_s = 0.3
    c = client(cluster.registry, bulkhead={"max_concurrent": 2, "max_queue": 1})
    calls = [asyncio.create_task(c.call(GET)) for _ in range(3)]
    bulkhead = c.target("svc").bulkhead
    await eventually(lambda: (bulkhead.active, bulkhead.waiting) == (2, 1), within_s=5)
    with pytest.raises(BulkheadFull):
        await c.call(GET)
    await asyncio.gather(*calls)


async def test_the_remaining_deadline_travels_downstream_and_a_spent_one_sends_nothing(cluster: Cluster) -> None:
    c = client(cluster.registry)
    answer = await c.call(GET, deadline=time.monotonic() + 0.5)
    assert 300 < answer.deadline_ms <= 500
    with pytest.raises(DeadlineExceeded):
        await c.call(GET, deadline=time.monotonic() - 1)
    assert sum(b.hits["GET"] for b in cluster.behaviours.values()) == 1


async def test_a_slow_answer_times_out_per_try_and_is_retried_elsewhere(cluster: Cluster) -> None:
    cluster.behaviours["a"].delay_s = 1.0
    c = client(cluster.registry, per_try_timeout_s=0.1, retry={"backoff_base_s": 0.001})
    answers = [await c.call(GET) for _ in range(6)]
    assert {a.instance for a in answers} <= {"b", "c"}


async def test_an_operations_own_per_try_timeout_sends_the_retry_elsewhere(cluster: Cluster) -> None:
    """The default policy would wait 3 s on the slow instance; the operation says 0.1 s."""
    cluster.behaviours["a"].delay_s = 1.0
    quick = Operation("svc", "get", "GET", "/thing", None, Reply, Access.PUBLIC, idempotent=True, per_try_timeout_s=0.1)
    c = client(cluster.registry, retry={"backoff_base_s": 0.001})
    assert c.policy(quick).per_try_timeout_s == 0.1
    started = time.monotonic()
    answers = [await c.call(quick) for _ in range(6)]
    assert {a.instance for a in answers} <= {"b", "c"}
    assert time.monotonic() - started < 2.0  # generous: two tries cut at 0.1 s, four quick answers


def test_a_routes_timeout_is_the_calls_deadline_and_bounds_or_replaces_each_try() -> None:
    quick = Operation("svc", "get", "GET", "/thing", None, Reply, Access.PUBLIC, idempotent=True, per_try_timeout_s=0.5)
    c = client(StaticRegistry())
    for route_s, (timeout_s, per_try_timeout_s) in {0.2: (0.2, 0.2), 5.0: (5.0, 0.5), 60.0: (60.0, 60.0)}.items():
        policy = c.policy(quick, timeout_s=route_s)
        assert (policy.timeout_s, policy.per_try_timeout_s) == (timeout_s, per_try_timeout_s)


async def test_a_fallback_turns_failure_into_a_value(cluster: Cluster) -> None:
    for b in cluster.behaviours.values():
        b.status = 503
    c = client(cluster.registry, retry={"attempts": 1})

    async def fallback(exc: Exception) -> Reply:
        return Reply(instance=f"fallback:{type(exc).__name__}", deadline_ms=0)

    assert (await c.call(GET, fallback=fallback)).instance == "fallback:ServiceUnavailable"


async def test_connection_errors_are_transport_errors_when_no_instance_answers() -> None:
    registry = StaticRegistry([Instance(service="svc", instance_id="x", address="127.0.0.1", port=free_port(), pid=0)])
    with pytest.raises(TransportError):
        await client(registry, retry={"attempts": 2, "backoff_base_s": 0.001}).call(GET)


async def test_an_instance_failing_its_active_check_leaves_the_balancer_until_it_passes(cluster: Cluster) -> None:
    not_ready = HttpServer(app("d", Behaviour()), host="127.0.0.1", port=0)
    port = await not_ready.start()
    # "d" answers /thing but its /ready says 503: the check fails.
    await cluster.registry.register(Instance(service="svc", instance_id="d", address="127.0.0.1", port=port, pid=0))
    try:
        c = client(cluster.registry)
        c.target("svc")
        await c.check_health()
        assert {(await c.call(GET)).instance for _ in range(30)} == {"a", "b", "c"}
    finally:
        await not_ready.stop()


# ServiceClient.start: the chain through callbacks


async def started(
    c: ServiceClient, *, tasks: list[int] | None = None, retry_safe: bool = True, deadline: float | None = None
) -> Answer:
    """One `start`ed GET /thing; `tasks` gets how many tasks it left running when `start` returned."""
    settled: asyncio.Future[Answer | Exception] = asyncio.get_running_loop().create_future()
    results: list[Answer | Exception] = []

    def done(result: Answer | Exception) -> None:
        results.append(result)
        settled.set_result(result)

    c.start("svc", "GET", "/thing", done, CallOptions(retry_safe=retry_safe, deadline=deadline), traceparent=None)
    if tasks is not None:
        tasks.append(len(c._callbacks._tasks))
    result = await settled
    await asyncio.sleep(0)
    assert len(results) == 1  # exactly once
    if isinstance(result, Exception):
        raise result
    return result


def instance_of(answer: Answer) -> str:
    return str(msgspec.json.decode(answer.body)["instance"])


async def test_a_pooled_connection_answers_through_callbacks_alone(cluster: Cluster) -> None:
    c = client(cluster.registry)
    tasks: list[int] = []
    first = [instance_of(await started(c, tasks=tasks)) for _ in range(3)]  # each instance: a connection
    later = [instance_of(await started(c, tasks=tasks)) for _ in range(6)]
    assert sorted(first) == ["a", "b", "c"]
    assert sorted(later) == ["a", "a", "b", "b", "c", "c"]
    assert tasks == [1, 1, 1, 0, 0, 0, 0, 0, 0]  # a task only to connect


async def test_a_503_is_retried_on_another_instance_by_a_task(cluster: Cluster) -> None:
    c = client(cluster.registry, retry={"attempts": 3, "backoff_base_s": 0.001})
    for _ in range(3):
        await started(c)
    cluster.behaviours["a"].status = 503
    cluster.behaviours["b"].status = 503
    answer = await started(c)
    assert (answer.status, instance_of(answer)) == (200, "c")
    assert cluster.behaviours["a"].hits["GET"] == 2  # the warm-up's, then this call's first try


async def test_a_non_idempotent_503_is_the_answer(cluster: Cluster) -> None:
    for b in cluster.behaviours.values():
        b.status = 503
    c = client(cluster.registry)
    answer = await started(c, retry_safe=False)
    assert answer.status == 503
    assert sum(b.hits["GET"] for b in cluster.behaviours.values()) == 1


async def test_a_timed_out_try_is_retried_elsewhere_and_the_errors_are_the_chains(cluster: Cluster) -> None:
    c = client(cluster.registry, per_try_timeout_s=0.1, retry={"backoff_base_s": 0.001})
    for _ in range(3):
        await started(c)
    cluster.behaviours["a"].delay_s = 1.0
    assert {instance_of(await started(c)) for _ in range(6)} <= {"b", "c"}
    with pytest.raises(DeadlineExceeded):
        await started(c, deadline=time.monotonic() - 1)
    dead = StaticRegistry([Instance(service="svc", instance_id="x", address="127.0.0.1", port=free_port(), pid=0)])
    with pytest.raises(TransportError):
        await started(client(dead, retry={"attempts": 2, "backoff_base_s": 0.001}))


async def test_the_call_has_one_span_and_one_count(cluster: Cluster, spans: list[tracing.SpanRecord]) -> None:
    c = client(cluster.registry)
    c.metrics = Metrics("test")
    parent = "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"
    settled: asyncio.Future[Answer | Exception] = asyncio.get_running_loop().create_future()
    c.start(
        "svc",
        "GET",
        "/thing",
        settled.set_result,
        CallOptions(retry_safe=True),
        traceparent=parent,
        operation="svc.get",
    )
    assert isinstance(await settled, Answer)
    with pytest.raises(DeadlineExceeded):
        await started(c, deadline=time.monotonic() - 1)
    assert [s.name for s in spans] == ["svc.get"]  # the second had no parent: background, not recorded
    span = spans[0]
    assert (span.trace_id, span.parent_id, span.kind) == ("ab" * 16, "cd" * 8, "client")
    assert span.attributes["meshop.outcome"] == "2xx"
    assert [name for name, _, _ in span.events] == ["try"]
    exposition = (await c.metrics.exposition()).decode()
    assert 'outcome="2xx"' in exposition
    assert 'outcome="rejected"' in exposition


@pytest.mark.parametrize("status", [200, 503])
async def test_the_caller_hears_first_and_the_call_is_recorded_as_of_then(
    cluster: Cluster, spans: list[tracing.SpanRecord], status: int
) -> None:
    """The answer goes to the caller before the try and the call are recorded (the gateway's
    reply is not held up by them); the records still say when the answer came: the span ends,
    and its try event is stamped, no later than the caller heard."""
    for b in cluster.behaviours.values():
        b.status = status
    c = client(cluster.registry)
    c.metrics = Metrics("test")
    heard: list[tuple[int, int]] = []  # (spans exported, epoch ns) when the caller heard
    settled: asyncio.Future[Answer | Exception] = asyncio.get_running_loop().create_future()

    def done(result: Answer | Exception) -> None:
        heard.append((len(spans), time.time_ns()))
        settled.set_result(result)

    parent = "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"
    c.start("svc", "GET", "/thing", done, CallOptions(retry_safe=False), traceparent=parent)
    answer = await settled
    assert isinstance(answer, Answer)
    assert answer.status == status
    (exported, heard_ns), (span,) = heard[0], spans
    assert exported == 0  # not yet when the caller heard
    assert span.start_ns <= span.end_ns <= heard_ns
    assert [(name, ts <= span.end_ns) for name, ts, _ in span.events] == [("try", True)]
    assert span.attributes["meshop.outcome"] == ("2xx" if status == 200 else "5xx")
    assert f'outcome="{span.attributes["meshop.outcome"]}"' in (await c.metrics.exposition()).decode()


async def test_a_call_whose_task_is_cancelled_before_it_ran_still_settles(cluster: Cluster) -> None:
    """A task cancelled before its first step never runs its coroutine's handlers (as at a
    loop's shutdown): the caller still hears, once, that its call was cancelled."""
    c = client(cluster.registry)
    results: list[Answer | Exception] = []
    c.start("svc", "GET", "/thing", results.append, CallOptions(retry_safe=True), traceparent=None)
    (task,) = c._callbacks._tasks  # no idle connection yet: the call goes on in a task
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await asyncio.sleep(0)
    assert len(results) == 1
    assert isinstance(results[0], TransportError)
    assert "cancelled" in str(results[0])
    assert not c._callbacks._tasks


async def test_a_bookkeeping_bug_after_the_answer_is_logged_and_the_connection_kept(cluster: Cluster) -> None:
    """The caller has heard when the try is recorded: a failure there (a bug) is a log line,
    and neither a second answer nor a broken pooled connection."""
    c = client(cluster.registry)
    for _ in range(3):  # a pooled connection to each instance
        await started(c)
    target = c.target("svc")
    working = target.balancer

    class Broken:
        def __getattr__(self, name: str) -> object:
            return getattr(working, name)

        def finished(self, instance: Instance, latency_s: float, *, ok: bool) -> None:
            raise RuntimeError("a balancer bug")

    target.balancer = Broken()  # type: ignore[assignment]
    with structlog.testing.capture_logs() as logs:
        answer = await started(c)  # exactly once, or `started` fails
    assert answer.status == 200
    assert [entry["event"] for entry in logs if entry["log_level"] == "error"] == ["recording a call failed"]
    target.balancer = working
    tasks: list[int] = []
    await started(c, tasks=tasks)
    assert tasks == [0]  # the pooled connection served it: no task to connect


async def test_a_health_check_that_raises_is_logged_and_the_others_go_on(cluster: Cluster) -> None:
    """An error no transport maps (uvloop's RuntimeError on a closed handle, say) used to end
    `check_health_forever`: the process never checked its callees again until it restarted."""
    pool = HttpPool()
    asked: Counter[int] = Counter()
    three_rounds = asyncio.Event()

    class Breaking:  # the pool, but a check of "d" raises what no transport maps
        async def request(self, host: str, port: int, *args: Any) -> HttpReply:
            asked[port] += 1
            if port == port_of_d:
                if asked[port] == 3:
                    three_rounds.set()
                raise RuntimeError("unable to perform operation; the handler is closed")
            return await pool.request(host, port, *args)

        def send(self, *args: Any) -> bool:
            return pool.send(*args)

        async def close(self) -> None:
            await pool.close()

    not_ready = HttpServer(app("d", Behaviour()), host="127.0.0.1", port=0)
    port_of_d = await not_ready.start()
    d = Instance(service="svc", instance_id="d", address="127.0.0.1", port=port_of_d, pid=0)
    await cluster.registry.register(d)
    c = ServiceClient(cluster.registry, http=Breaking())
    c.target("svc")
    try:
        with structlog.testing.capture_logs() as logs:
            checks = asyncio.create_task(c.check_health_forever(interval_s=0.01))
            async with asyncio.timeout(10):
                await three_rounds.wait()
            assert not checks.done()
            checks.cancel()
    finally:
        await not_ready.stop()
        await c.close()
    assert [e["instance"] for e in logs if e["event"] == "health check failed"][:3] == ["d", "d", "d"]
    assert all(asked[i.port] >= 2 for i in cluster.registry.instances("svc") if i.instance_id != "d")
