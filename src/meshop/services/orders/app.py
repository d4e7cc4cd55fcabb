"""The orders service: its settings and definition, and `build`, which wires its handlers to its API."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated

import msgspec

from meshop.contracts import catalog, inventory, payments, shipping
from meshop.contracts import orders as contract
from meshop.contracts.users import remote_verifier
from meshop.mesh import Api, Runtime, SagaRunner, Seconds, ServiceDefinition, SqlSagaLog, from_env
from meshop.services.orders.domain import checkout_saga, project
from meshop.services.orders.handlers import Orders


class OrdersSettings(msgspec.Struct, frozen=True, kw_only=True):
    """`MESHOP_ORDERS_*`."""

    saga_deadline_s: Seconds = 30.0
    #: A saga nobody advanced (or touched while retrying) for this long is resumed.
    resume_idle_s: Annotated[float, msgspec.Meta(ge=0)] = 30.0
    #: How often the sweeper looks for such sagas.
    sweep_interval_s: Seconds = 5.0


async def build(runtime: Runtime) -> Api:
    settings = from_env(OrdersSettings, "MESHOP_ORDERS_")
    db = runtime.database
    saga_log = SqlSagaLog(db, project=project)
    runner = SagaRunner(checkout_saga(runtime.client), saga_log, deadline_s=settings.saga_deadline_s)
    orders = Orders(
        db=db,
        client=runtime.client,
        saga_log=saga_log,
        runner=runner,
        spawn=runtime.spawn,
        saga_duration=runtime.metrics.histogram(
            "meshop_saga_duration_seconds",
            "From the order's acceptance to its saga's end, by outcome",
            ["saga", "outcome"],
        ),
    )
    sagas_by_state = runtime.metrics.gauge("meshop_sagas", "Sagas by name and state", ["saga", "state"])
    runtime.metrics.on_scrape(functools.partial(orders.count_sagas, sagas_by_state))
    api = Api("orders", max_body_bytes=runtime.settings.max_body_bytes)
    api.implement(contract.CREATE)(orders.create)
    api.implement(contract.GET)(orders.get)
    api.implement(contract.CANCEL)(orders.cancel)
    api.implement(contract.ADMIN_LIST)(orders.admin_list)
    api.implement(contract.LIST)(orders.list_orders)
    runtime.spawn(
        runner.sweep_forever(idle_for_s=settings.resume_idle_s, interval_s=settings.sweep_interval_s),
        name="saga-sweeper",
    )
    return api


DEFINITION = ServiceDefinition(
    name="orders",
    build=build,
    contract=contract,
    migrations=Path(__file__).parent / "migrations",
    verifier=remote_verifier,
    outbox=True,
    calls=(
        catalog.LOOKUP,
        payments.TOKENIZE,
        inventory.RESERVE,
        inventory.RELEASE_BY_KEY,
        inventory.COMMIT,
        payments.AUTHORIZE,
        payments.VOID_BY_KEY,
        payments.CAPTURE,
        shipping.CREATE,
        shipping.CANCEL_BY_KEY,
    ),
)
