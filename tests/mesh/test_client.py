"""ServiceClient over real sockets: balancing, typed errors, transport failures."""

from __future__ import annotations

from collections.abc import AsyncIterator

import msgspec
import pytest
from starlette.applications import Starlette

from meshop.mesh.client import ServiceClient
from meshop.mesh.errors import NoInstancesError, TransportError, Unprocessable
from meshop.mesh.operation import Access, Operation
from meshop.mesh.registry import Instance, StaticRegistry
from meshop.mesh.resilience.config import Policies
from meshop.mesh.routing import Api, RequestContext
from meshop.mesh.server import HttpServer
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
