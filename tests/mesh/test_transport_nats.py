"""Operations over NATS request-reply, served by the same endpoints as HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

import msgspec
import nats
import pytest

from meshop.mesh.client import ServiceClient
from meshop.mesh.errors import TransportError, Unprocessable
from meshop.mesh.operation import Access, Operation
from meshop.mesh.registry import Instance, StaticRegistry
from meshop.mesh.resilience.config import Policies
from meshop.mesh.routing import Api, RequestContext
from meshop.mesh.transport_nats import serve

pytestmark = pytest.mark.integration


class Add(msgspec.Struct):
    amount: Annotated[int, msgspec.Meta(ge=1)]


class Total(msgspec.Struct):
    account: str
    total: int
    served_by: str


ADD = Operation("ledger", "add", "POST", "/accounts/{account}/add", Add, Total, Access.PUBLIC, idempotent=True)


@pytest.fixture
async def ledger(nats_url: str) -> AsyncIterator[tuple[str, StaticRegistry]]:
    nc = await nats.connect(nats_url)
    registry = StaticRegistry()
    for name in ("n1", "n2"):
        api = Api("ledger")

        def make(name: str):  # type: ignore[no-untyped-def]
            async def add(ctx: RequestContext, body: Add) -> Total:
                return Total(account=ctx.path_params["account"], total=body.amount * 10, served_by=name)

            return add

        api.implement(ADD)(make(name))
        await serve(nc, api, name)
        await registry.register(Instance(service="ledger", instance_id=name, address="127.0.0.1", port=1, pid=0))
    yield nats_url, registry
    await nc.close()


async def test_a_call_over_nats_reaches_the_chosen_instance_with_its_path_params(
    ledger: tuple[str, StaticRegistry],
) -> None:
    url, registry = ledger
    nc = await nats.connect(url)
    try:
        policies = Policies({"default": {"transport": "nats", "balancer": "round_robin"}})
        client = ServiceClient(registry, nc=nc, policies=policies)
        answers = [await client.call(ADD, Add(amount=2), path_params={"account": "acc 1"}) for _ in range(10)]
    finally:
        await nc.close()
    assert {a.account for a in answers} == {"acc 1"}
    assert {a.total for a in answers} == {20}
    assert {a.served_by for a in answers} == {"n1", "n2"}


async def test_validation_errors_come_back_typed_over_nats(ledger: tuple[str, StaticRegistry]) -> None:
    url, registry = ledger
    nc = await nats.connect(url)
    try:
        client = ServiceClient(registry, nc=nc)
        with pytest.raises(Unprocessable):
            await client.call(ADD, {"amount": 0}, path_params={"account": "a"}, transport="nats")
    finally:
        await nc.close()


async def test_an_instance_nobody_serves_is_skipped_like_a_refused_connection(
    ledger: tuple[str, StaticRegistry],
) -> None:
    url, registry = ledger
    await registry.register(Instance(service="ledger", instance_id="gone", address="127.0.0.1", port=1, pid=0))
    nc = await nats.connect(url)
    try:
        client = ServiceClient(registry, nc=nc, policies=Policies({"default": {"transport": "nats"}}))
        answers = [await client.call(ADD, Add(amount=1), path_params={"account": "a"}) for _ in range(12)]
        assert {a.served_by for a in answers} <= {"n1", "n2"}
        only_gone = StaticRegistry([Instance(service="ledger", instance_id="gone", address="h", port=1, pid=0)])
        lonely = ServiceClient(only_gone, nc=nc, policies=Policies({"default": {"transport": "nats"}}))
        with pytest.raises(TransportError):
            await lonely.call(ADD, Add(amount=1), path_params={"account": "a"})
    finally:
        await nc.close()
