"""The orders service: place, read and list orders; checkout runs as a saga."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any

import msgspec
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from meshop.contracts import catalog, payments
from meshop.contracts import orders as contract
from meshop.contracts.orders import PricedLine
from meshop.contracts.users import remote_verifier
from meshop.mesh import (
    Api,
    Conflict,
    MeshError,
    NotFound,
    RequestContext,
    Runtime,
    SagaRunner,
    SagaState,
    Seconds,
    ServiceDefinition,
    SqlSagaLog,
    Unprocessable,
    from_env,
    read_page,
    sagas,
    tracing,
)
from meshop.services.orders import events, store
from meshop.services.orders.domain import checkout_saga, project

_canonical = msgspec.json.Encoder(order="sorted")


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
    client = runtime.client
    saga_log = SqlSagaLog(db, project=project)
    runner = SagaRunner(checkout_saga(client), saga_log, deadline_s=settings.saga_deadline_s)
    api = Api("orders", max_body_bytes=runtime.settings.max_body_bytes)

    settled = Settlements()
    sagas_by_state = runtime.metrics.gauge("meshop_sagas", "Sagas by name and state", ["saga", "state"])
    saga_duration = runtime.metrics.histogram(
        "meshop_saga_duration_seconds", "From the order's acceptance to its saga's end, by outcome", ["saga", "outcome"]
    )

    async def count_sagas() -> None:
        async with db.read() as conn:
            query = sa.select(sagas.c.name, sagas.c.status, sa.func.count().label("n"))
            for row in await conn.execute(query.group_by(sagas.c.name, sagas.c.status)):
                sagas_by_state.labels(row.name, row.status.lower()).set(row.n)

    runtime.metrics.on_scrape(count_sagas)

    async def owned(order_id: str, user_id: str) -> Any:
        async with db.read() as conn:
            row = await store.by_id(conn, order_id)
        if row is None or row.user_id != user_id:  # another user's order does not exist for you
            raise NotFound("no such order")
        return row

    async def run_checkout(state: SagaState) -> None:
        started = time.monotonic()
        try:
            ended = await runner.run(state)
            saga_duration.labels("checkout", ended.status.value.lower()).observe(time.monotonic() - started)
        finally:
            settled.done(state.saga_id)

    @api.implement(contract.CREATE)
    async def create(ctx: RequestContext, body: contract.CreateOrder) -> contract.OrderAccepted:
        user_id = ctx.user.user_id
        key = ctx.idempotency_key
        assert key is not None
        request_hash = hashlib.sha256(_canonical.encode(body)).hexdigest()
        async with db.read() as conn:
            existing = await store.by_key(conn, user_id, key)
        if existing is not None:
            return _replay(existing, request_hash)
        # Prices and the card token do not depend on each other: fetch both at once. The card is
        # stored under a key of this request, so a tokenize that timed out on one replica is
        # retried on another without storing it twice.
        card_key = "tokenize-" + hashlib.sha256(f"{user_id}\n{key}\n{request_hash}".encode()).hexdigest()
        lookup = catalog.LookupRequest(skus=sorted({i.sku for i in body.items}))
        try:
            async with asyncio.TaskGroup() as group:
                found_task = group.create_task(client.call(catalog.LOOKUP, lookup, deadline=ctx.deadline))
                method_task = group.create_task(
                    client.call(payments.TOKENIZE, body.payment, idempotency_key=card_key, deadline=ctx.deadline)
                )
        except* MeshError as failed:
            raise failed.exceptions[0] from None
        found, method = found_task.result(), method_task.result()
        products = {p.sku: p for p in found.items}
        unknown = sorted({i.sku for i in body.items} - products.keys())
        if unknown:
            raise Unprocessable(
                f"unknown SKU: {', '.join(unknown)}",
                errors=[{"field": "items", "error": "unknown_sku", "skus": unknown}],
            )
        currencies = {products[i.sku].currency for i in body.items}
        if len(currencies) != 1:
            raise Unprocessable("all items of an order must have the same currency")
        priced = [
            PricedLine(
                sku=i.sku, quantity=i.quantity, name=products[i.sku].name, price_cents=products[i.sku].price_cents
            )
            for i in body.items
        ]
        total = sum(line.price_cents * line.quantity for line in priced)
        order_id = uuid.uuid4().hex
        tracing.annotate({contract.TRACE_ATTRIBUTE: order_id})  # the console finds the checkout's trace by it
        created = store.now()
        state = runner.new(
            order_id,
            {
                "user_id": user_id,
                "items": [{"sku": i.sku, "quantity": i.quantity} for i in body.items],
                "payment_method": method.token,
                "total_cents": total,
                "currency": currencies.pop(),
                "address": msgspec.to_builtins(body.shipping_address),
                "history": [{"at": created, "event": "PLACED", "detail": None}],
            },
        )
        try:
            async with db.begin() as conn:
                await conn.execute(
                    store.orders.insert().values(
                        id=order_id,
                        user_id=user_id,
                        idempotency_key=key,
                        request_hash=request_hash,
                        status="PENDING",
                        items=msgspec.json.encode(priced).decode(),
                        total_cents=total,
                        currency=state.data["currency"],
                        history=msgspec.json.encode(state.data["history"]).decode(),
                        created_at=created,
                    )
                )
                await conn.execute(sagas.insert().values(**SqlSagaLog.row(state)))
                await events.order_placed(conn, order_id=order_id, user_id=user_id, total_cents=total, items=body.items)
        except IntegrityError:  # the same key raced in concurrently
            async with db.read() as conn:
                return _replay(await store.by_key(conn, user_id, key), request_hash)
        runtime.spawn(run_checkout(state), name=f"checkout-{order_id}")
        return contract.OrderAccepted(id=order_id, status="PENDING")

    @api.implement(contract.GET)
    async def get(ctx: RequestContext, _body: None) -> contract.Order:
        order_id = ctx.path_params["id"][:64]
        tracing.annotate({contract.TRACE_ATTRIBUTE: order_id})
        wait_s = ctx.query_int("wait_s", default=0, low=0, high=MAX_WAIT_S)
        row = await owned(order_id, ctx.user.user_id)
        if row.status == "PENDING" and wait_s:
            # Long poll: answer as soon as the checkout ends (or when wait_s runs out).
            row = await settled.wait(
                order_id, min(wait_s, ctx.remaining_s(wait_s)), lambda: owned(order_id, ctx.user.user_id)
            )
        return store.to_order(row)

    @api.implement(contract.CANCEL)
    async def cancel(ctx: RequestContext, _body: None) -> contract.Order:
        order_id = ctx.path_params["id"][:64]
        tracing.annotate({contract.TRACE_ATTRIBUTE: order_id})
        await owned(order_id, ctx.user.user_id)
        async with db.begin() as conn:
            row = await store.by_id(conn, order_id)
            if row.status == "CANCELLED":
                return store.to_order(row)  # cancelling twice changes nothing
            if row.status == "CONFIRMED" or not await saga_log.request_cancel(conn, order_id):
                raise Conflict("this order is already being fulfilled and can no longer be cancelled")
        # The saga notices at its next step (here or in the replica running it) and
        # compensates; a saga nobody runs is resumed by a sweeper and does the same.
        return store.to_order(row)

    @api.implement(contract.ADMIN_LIST)
    async def admin_list(ctx: RequestContext, _body: None) -> contract.AdminOrderPage:
        items, cursor = await read_page(ctx, db, store.orders, store.orders.c.id, _admin_order)
        return contract.AdminOrderPage(items=items, next_cursor=cursor)

    @api.implement(contract.LIST)
    async def list_orders(ctx: RequestContext, _body: None) -> contract.OrderPage:
        limit = ctx.query_int("limit", default=20, low=1, high=100)
        before = ctx.query_str("cursor", max_length=40)
        async with db.read() as conn:
            rows = await store.of_user(conn, ctx.user.user_id, before=before, limit=limit + 1)
        items = [store.to_order(r) for r in rows[:limit]]
        return contract.OrderPage(items=items, next_cursor=items[-1].created_at if len(rows) > limit else None)

    runtime.spawn(
        runner.sweep_forever(idle_for_s=settings.resume_idle_s, interval_s=settings.sweep_interval_s),
        name="saga-sweeper",
    )
    return api


MAX_WAIT_S = 8


class Settlements:
    """Wakes long-polling readers when a checkout run by this process ends."""

    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}

    def done(self, order_id: str) -> None:
        event = self._events.pop(order_id, None)
        if event is not None:
            event.set()

    async def wait(self, order_id: str, timeout_s: float, reload: Callable[[], Awaitable[Any]]) -> Any:
        """The order once it is no longer PENDING, or as it is when `timeout_s` ends.

        A checkout run by another replica sets no event here: the row is re-read every
        100 ms as well, so the wait ends within 100 ms of the order settling anywhere.
        """
        event = self._events.setdefault(order_id, asyncio.Event())
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            row = await reload()
            remaining = deadline - asyncio.get_running_loop().time()
            if row.status != "PENDING" or remaining <= 0:
                return row
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), min(0.1, remaining))


def _admin_order(row: Any) -> contract.AdminOrder:
    return contract.AdminOrder(
        id=row.id,
        user_id=row.user_id,
        status=row.status,
        total_cents=row.total_cents,
        cancel_reason=row.cancel_reason,
        items=[contract.AdminOrderLine(sku=i.sku, quantity=i.quantity) for i in store.to_order(row).items],
    )


def _replay(row: Any, request_hash: str) -> contract.OrderAccepted:
    if row.request_hash != request_hash:
        raise Conflict("this Idempotency-Key was used with a different request")
    return contract.OrderAccepted(id=row.id, status=row.status)


DEFINITION = ServiceDefinition(
    name="orders",
    build=build,
    migrations=Path(__file__).parent / "migrations",
    verifier=remote_verifier,
    outbox=True,
)
