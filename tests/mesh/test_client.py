"""ServiceClient over real sockets: balancing, typed errors, transport failures."""

from __future__ import annotations

from collections.abc import AsyncIterator

import msgspec
import pytest
from starlette.applications import Starlette

from meshop.mesh.api.operation import Access, Operation
from meshop.mesh.api.routing import Api, RequestContext
from meshop.mesh.client.client import ServiceClient
from meshop.mesh.errors import NoInstancesError, TransportError, Unprocessable
from meshop.mesh.registry import Instance, StaticRegistry
from meshop.mesh.resilience.config import Policies
from meshop.mesh.transport.server import HttpServer
from meshop.runtime.nats_server import free_port

pytestmark = pytest.mark.integration


class Echo(msgspec.Struct):
    value: int


class Who(msgspec.Struct):
    instance: str
    value: int


ECHO = Operation("echo", "echo", "POST", "/echo/{tag}", Echo, Who, Access.PUBLIC, idempotent=True)


def app(name: str) -> Starlette:
    api = Api("echo")

    @api.implement(ECHO)
    async def echo(ctx: RequestContext, body: Echo) -> Who:
        return Who(instance=f"{name}:{ctx.path_params['tag']}", value=body.value)

    return Starlette(routes=api.routes())


@pytest.fixture
async def two_instances() -> AsyncIterator[StaticRegistry]:
    servers = [HttpServer(app(n), host="127.0.0.1", port=0) for n in ("a", "b")]
    ports = [await s.start() for s in servers]
    yield StaticRegistry(
        Instance(service="echo", instance_id=n, address="127.0.0.1", port=p, pid=0)
        for n, p in zip("ab", ports, strict=True)
    )
    for s in servers:
        await s.stop()


async def test_round_robin_spreads_calls_evenly(two_instances: StaticRegistry) -> None:
    client = ServiceClient(two_instances, policies=Policies({"default": {"balancer": "round_robin"}}))
    seen = [(await client.call(ECHO, Echo(value=i), path_params={"tag": "t"})).instance for i in range(10)]
    assert seen.count("a:t") == seen.count("b:t") == 5
    assert client.target("echo").balancer.efficiency() == 1.0


async def test_a_problem_answer_is_raised_as_its_typed_error(two_instances: StaticRegistry) -> None:
    client = ServiceClient(two_instances)
    with pytest.raises(Unprocessable):
        await client.call(ECHO, {"value": "not a number"}, path_params={"tag": "t"})


async def test_connection_refused_is_a_retryable_transport_error() -> None:
    registry = StaticRegistry([Instance(service="echo", instance_id="x", address="127.0.0.1", port=free_port(), pid=0)])
    with pytest.raises(TransportError) as info:
        await ServiceClient(registry).call(ECHO, Echo(value=1), path_params={"tag": "t"})
    assert info.value.retryable
    assert not info.value.sent


async def test_no_registered_instance_is_no_instances_error() -> None:
    with pytest.raises(NoInstancesError):
        await ServiceClient(StaticRegistry()).call(ECHO, Echo(value=1), path_params={"tag": "t"})


async def test_what_a_caller_keeps_of_departed_instances_is_dropped() -> None:
    """A restarted process is a new instance, so each caller would keep every process that
    ever served: breakers, outlier records and balancer state. Past 2n + 8 seen, the
    departed are forgotten."""
    registry = StaticRegistry()
    client = ServiceClient(registry)
    target = client.target("echo")
    first: set[str] = set()
    for generation in range(10):  # two instances at a time, each generation replacing the last
        for old in registry.instances("echo"):
            await registry.deregister(old)
        for n in range(2):
            instance_id = f"g{generation}-{n}"
            await registry.register(Instance(service="echo", instance_id=instance_id, address="h", port=1, pid=0))
        for _ in range(4):
            chosen = client.pick("echo")
            target.balancer.started(chosen)
            target.balancer.finished(chosen, 0.01, ok=False)
            target.outliers.record(chosen.instance_id, failed=True, pool=lambda: [])
            target.outliers.checked(chosen.instance_id, ready=False)
        first = first or {i.instance_id for i in registry.instances("echo")}
    kept = [
        set(target.breakers),
        set(target.balancer.sent()),
        set(target.balancer._ewma),  # type: ignore[attr-defined]
        set(target.balancer.outstanding),  # type: ignore[attr-defined]
        set(target.outliers._consecutive),
        target.outliers._failing_checks,
    ]
    assert all(ids and not ids & first and len(ids) <= 2 * 2 + 8 for ids in kept), kept
    assert {"g9-0", "g9-1"} <= set(target.breakers)  # the registered ones are kept
