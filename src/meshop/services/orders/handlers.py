"""The orders' operations: place an order (its checkout runs as a saga), read, list, cancel."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import msgspec
from sqlalchemy.exc import IntegrityError

from meshop.contracts import catalog, payments
from meshop.contracts import orders as contract
from meshop.mesh import (
    Conflict,
    Database,
    MeshError,
    NotFound,
    RequestContext,
    SagaRunner,
    SagaState,
    ServiceClient,
    SqlSagaLog,
    read_page,
    tracing,
)
from meshop.services.orders import domain, events, store

if TYPE_CHECKING:
    from prometheus_client import Gauge, Histogram

#: The longest a GET may wait for a pending order to settle (`?wait_s=`).
MAX_WAIT_S = 8

_canonical = msgspec.json.Encoder(order="sorted")


class Orders:
    """One method per operation of the orders' contract.

    `spawn(coroutine, name=...)` runs a checkout in the background (the process's task
    set); `saga_duration` observes each checkout's time by outcome.
    """

    def __init__(
        self,
        *,
        db: Database,
        client: ServiceClient,
        saga_log: SqlSagaLog,
        runner: SagaRunner,
        spawn: Callable[..., Any],
        saga_duration: Histogram,
    ) -> None:
        self._db = db
        self._client = client
        self._saga_log = saga_log
        self._runner = runner
        self._spawn = spawn
        self._saga_duration = saga_duration
        self._settled = Settlements()

    async def create(self, ctx: RequestContext, body: contract.CreateOrder) -> contract.OrderAccepted:
        user_id = ctx.user.user_id
        key = ctx.idempotency_key
        assert key is not None
        request_hash = hashlib.sha256(_canonical.encode(body)).hexdigest()
        async with self._db.read() as conn:
            existing = await store.by_key(conn, user_id, key)
        if existing is not None:
            return domain.accepted_again(existing, request_hash)
        # Prices and the card token do not depend on each other: fetch both at once. The card is
        # stored under a key of this request, so a tokenize that timed out on one replica is
        # retried on another without storing it twice.
        card_key = "tokenize-" + hashlib.sha256(f"{user_id}\n{key}\n{request_hash}".encode()).hexdigest()
        lookup = catalog.LookupRequest(skus=sorted({i.sku for i in body.items}))
        try:
            async with asyncio.TaskGroup() as group:
                found_task = group.create_task(self._client.call(catalog.LOOKUP, lookup, deadline=ctx.deadline))
                method_task = group.create_task(
                    self._client.call(payments.TOKENIZE, body.payment, idempotency_key=card_key, deadline=ctx.deadline)
                )
        except* MeshError as failed:
            raise failed.exceptions[0] from None
        found, method = found_task.result(), method_task.result()
        priced = domain.price(body.items, found.items)
        order_id = uuid.uuid4().hex
        tracing.annotate({contract.TRACE_ATTRIBUTE: order_id})  # the console finds the checkout's trace by it
        created = store.now()
        state = self._runner.new(
            order_id,
            {
                "user_id": user_id,
                "items": [{"sku": i.sku, "quantity": i.quantity} for i in body.items],
                "payment_method": method.token,
                "total_cents": priced.total_cents,
                "currency": priced.currency,
                "address": msgspec.to_builtins(body.shipping_address),
                "history": [{"at": created, "event": "PLACED", "detail": None}],
            },
        )
        try:
            async with self._db.begin() as conn:
                await store.insert(
                    conn,
                    id=order_id,
                    user_id=user_id,
                    idempotency_key=key,
                    request_hash=request_hash,
                    status="PENDING",
                    items=msgspec.json.encode(priced.lines).decode(),
                    total_cents=priced.total_cents,
                    currency=priced.currency,
                    history=msgspec.json.encode(state.data["history"]).decode(),
                    created_at=created,
                )
                await SqlSagaLog.insert(conn, state)
                await events.order_placed(
                    conn, order_id=order_id, user_id=user_id, total_cents=priced.total_cents, items=body.items
                )
        except IntegrityError:  # the same key raced in concurrently
            async with self._db.read() as conn:
                return domain.accepted_again(await store.by_key(conn, user_id, key), request_hash)
        self._settled.started(order_id)
        self._spawn(self._run_checkout(state), name=f"checkout-{order_id}")
        return contract.OrderAccepted(id=order_id, status="PENDING")

    async def get(self, ctx: RequestContext, _body: None) -> contract.Order:
        order_id = ctx.path_params["id"][:64]
        tracing.annotate({contract.TRACE_ATTRIBUTE: order_id})
        wait_s = ctx.query_int("wait_s", default=0, low=0, high=MAX_WAIT_S)
        if wait_s:  # long poll: answer as soon as the checkout ends (or when wait_s runs out)
            row = await self._settled.wait(
                order_id, min(wait_s, ctx.remaining_s(wait_s)), lambda: self._owned(order_id, ctx.user.user_id)
            )
        else:
            row = await self._owned(order_id, ctx.user.user_id)
        return store.to_order(row)

    async def cancel(self, ctx: RequestContext, _body: None) -> contract.Order:
        order_id = ctx.path_params["id"][:64]
        tracing.annotate({contract.TRACE_ATTRIBUTE: order_id})
        await self._owned(order_id, ctx.user.user_id)
        async with self._db.begin() as conn:
            row = await store.by_id(conn, order_id)
            if row.status == "CANCELLED":
                return store.to_order(row)  # cancelling twice changes nothing
            if row.status == "CONFIRMED" or not await self._saga_log.request_cancel(conn, order_id):
                raise Conflict("this order is already being fulfilled and can no longer be cancelled")
        # The saga notices at its next step (here or in the replica running it) and
        # compensates; a saga nobody runs is resumed by a sweeper and does the same.
        return store.to_order(row)

    async def admin_list(self, ctx: RequestContext, _body: None) -> contract.AdminOrderPage:
        items, cursor = await read_page(ctx, self._db, store.orders, store.orders.c.id, store.to_admin_order)
        return contract.AdminOrderPage(items=items, next_cursor=cursor)

    async def list_orders(self, ctx: RequestContext, _body: None) -> contract.OrderPage:
        limit = ctx.query_int("limit", default=20, low=1, high=100)
        before = ctx.query_str("cursor", max_length=40)
        async with self._db.read() as conn:
            rows = await store.of_user(conn, ctx.user.user_id, before=before, limit=limit + 1)
        items = [store.to_order(r) for r in rows[:limit]]
        return contract.OrderPage(items=items, next_cursor=items[-1].created_at if len(rows) > limit else None)

    async def count_sagas(self, gauge: Gauge) -> None:
        """Set `gauge` (labels: saga, state) to how many sagas are in each state."""
        async with self._db.read() as conn:
            for name, status, n in await store.saga_counts(conn):
                gauge.labels(name, status.lower()).set(n)

    async def _owned(self, order_id: str, user_id: str) -> Any:
        async with self._db.read() as conn:
            row = await store.by_id(conn, order_id)
        if row is None or row.user_id != user_id:  # another user's order does not exist for you
            raise NotFound("no such order")
        return row

    async def _run_checkout(self, state: SagaState) -> None:
        started = time.monotonic()
        try:
            ended = await self._runner.run(state)
            self._saga_duration.labels("checkout", ended.status.value.lower()).observe(time.monotonic() - started)
        finally:
            self._settled.done(state.saga_id)


class Settlements:
    """Wakes long-polling readers of an order when its checkout ends.

    A checkout this process runs (`started`) wakes its readers when it ends (`done`): they
    read the order once more then, and not before. A checkout run by another replica, or
    resumed by a sweeper, sets no event here: its readers re-read the row every `poll_s`,
    so their wait ends within `poll_s` of the order settling anywhere.
    """

    def __init__(self, *, poll_s: float = 0.1) -> None:
        self.poll_s = poll_s
        self._running: set[str] = set()
        self._waiting: dict[str, _Waiting] = {}

    @property
    def waiting(self) -> int:
        """How many orders have readers waiting now."""
        return len(self._waiting)

    def started(self, order_id: str) -> None:
        self._running.add(order_id)

    def done(self, order_id: str) -> None:
        self._running.discard(order_id)
        waiting = self._waiting.pop(order_id, None)
        if waiting is not None:
            waiting.event.set()

    async def wait(self, order_id: str, timeout_s: float, reload: Callable[[], Awaitable[Any]]) -> Any:
        """The order once it is no longer PENDING, or as it is when `timeout_s` ends.

        `reload` reads it (and may raise: the reader may not see it). The first read is
        `reload`'s too, after the wait is registered: a checkout ending in between is seen.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            waiting = self._waiting.get(order_id)
            if waiting is None:  # before the read: a `done` from now on is not missed
                waiting = self._waiting[order_id] = _Waiting()
            waiting.readers += 1
            try:
                row = await reload()
                remaining = deadline - loop.time()
                if row.status != "PENDING" or remaining <= 0:
                    return row
                local = order_id in self._running
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(waiting.event.wait(), remaining if local else min(self.poll_s, remaining))
            finally:
                waiting.readers -= 1
                if not waiting.readers and self._waiting.get(order_id) is waiting:
                    del self._waiting[order_id]  # nobody reads it now: forget it (or `done` did)


class _Waiting:
    """The readers waiting for one order, and the event that wakes them."""

    __slots__ = ("event", "readers")

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.readers = 0
