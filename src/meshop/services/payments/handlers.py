"""The payments' operations: tokenize, authorize, capture, void (also by key), refund."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

import msgspec
from sqlalchemy.exc import IntegrityError
from starlette.requests import Request
from starlette.responses import Response

from meshop.contracts import payments as contract
from meshop.mesh import (
    BadRequest,
    Database,
    Forbidden,
    NotFound,
    RequestContext,
    ServiceUnavailable,
    Unprocessable,
    from_loopback,
    insert_unless_present,
    json_response,
    problem_response,
    read_page,
)
from meshop.services.payments import domain, events, store
from meshop.services.payments.domain import CAPTURE, REFUND, VOID, Move
from meshop.services.payments.providers import PaymentProvider, ProviderUnavailable, SimulatedProvider, Tokenized

T = TypeVar("T")
ProviderCall = Callable[[str, str], Awaitable[None]]


def _now() -> str:
    return datetime.now(UTC).isoformat()


class ProviderFaults(msgspec.Struct, kw_only=True):
    latency_ms: Annotated[float, msgspec.Meta(ge=0, le=60_000)] = 0.0
    failure_rate: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.0


class Payments:
    """One method per operation of the payments' contract, on `provider`."""

    def __init__(self, *, db: Database, provider: PaymentProvider) -> None:
        self._db = db
        self._provider = provider

    async def tokenize(self, ctx: RequestContext, body: contract.Card) -> contract.PaymentMethod:
        """Store the card; with an idempotency key, a repeat returns the method stored first."""
        method = self._provider.tokenize(body)
        key = ctx.idempotency_key
        row = {
            "token": method.token,
            "brand": method.brand,
            "last4": method.last4,
            "behaviour": method.behaviour,
            "created_at": _now(),
            "idempotency_key": key,
        }
        try:
            async with self._db.begin() as conn:
                await store.insert_method(conn, row)
        except IntegrityError:  # stored under this key already (a retry, or a concurrent one)
            if key is None:
                raise
            async with self._db.read() as conn:
                first = await store.method_by_key(conn, key)
            return contract.PaymentMethod(token=first.token, brand=first.brand, last4=first.last4)
        return contract.PaymentMethod(token=method.token, brand=method.brand, last4=method.last4)

    async def authorize(self, ctx: RequestContext, body: contract.AuthorizeRequest) -> contract.Payment:
        key = ctx.idempotency_key
        assert key is not None
        async with self._db.read() as conn:
            existing = await store.by_key(conn, key)
            method = await store.method(conn, body.payment_method)
        if existing is not None:
            return domain.payment(existing)
        if method is None:
            raise Unprocessable("unknown payment method")
        tokenized = Tokenized(token=method.token, brand=method.brand, last4=method.last4, behaviour=method.behaviour)
        result = await _outage(self._provider.authorize(tokenized, body.amount_cents, body.currency, key=key))
        payment_id = uuid.uuid4().hex
        row: dict[str, Any] = {
            "id": payment_id,
            "idempotency_key": key,
            "order_id": body.order_id,
            "payment_method": body.payment_method,
            "status": "AUTHORIZED" if result.approved else "DECLINED",
            "amount_cents": body.amount_cents,
            "currency": body.currency,
            "provider": self._provider.name,
            "provider_ref": result.reference,
            "decline_reason": result.decline_reason,
            "updated_at": _now(),
        }
        try:
            async with self._db.begin() as conn:
                await store.insert(conn, row)
                if row["status"] == "AUTHORIZED":
                    await events.payment_authorized(
                        conn, payment_id=payment_id, order_id=body.order_id, amount_cents=body.amount_cents
                    )
        except IntegrityError:  # a concurrent call with the same key won, or a void-by-key
            async with self._db.read() as conn:
                winner = await store.by_key(conn, key)
            if domain.is_tombstone(winner) and result.approved:
                # Voided before we recorded it: release the hold we just got.
                await _outage(self._provider.void(result.reference, key=f"{key}:late"))
            return domain.payment(winner)
        return domain.payment(store.written(row))  # as committed: no read back

    async def capture(self, ctx: RequestContext, _body: None) -> contract.Payment:
        return await self._move(await self._found(ctx), CAPTURE, self._capture)

    async def void(self, ctx: RequestContext, _body: None) -> contract.Payment:
        return await self._move(await self._found(ctx), VOID, self._void)

    async def refund(self, ctx: RequestContext, _body: None) -> contract.Payment:
        return await self._move(await self._found(ctx), REFUND, self._refund)

    async def void_by_key(self, ctx: RequestContext, body: contract.UndoRequest) -> contract.Payment:
        """Void what `authorize` did with this key; if it has not run yet, it never will.

        The tombstone (VOIDED, nothing authorized) makes a late `authorize` with the
        key return it; one that was already talking to the provider voids its own
        approval when it finds the tombstone.
        """
        key = ctx.idempotency_key
        assert key is not None
        tombstone = domain.tombstone(
            key, body.order_id, provider=self._provider.name, payment_id=uuid.uuid4().hex, now=_now()
        )
        # If the authorization landed meanwhile, its row is returned and voided below.
        row = await insert_unless_present(self._db, store.payments, store.payments.c.idempotency_key == key, tombstone)
        return await self._move(row, VOID, self._void)

    async def admin_payments(self, ctx: RequestContext, _body: None) -> contract.AdminPaymentPage:
        items, cursor = await read_page(ctx, self._db, store.payments, store.payments.c.id, domain.admin_payment)
        return contract.AdminPaymentPage(items=items, next_cursor=cursor)

    async def set_provider_faults(self, request: Request) -> Response:
        """`PUT /_meshop/provider` (chaos mode, loopback only): a slow or failing simulated provider."""
        if not from_loopback(request):
            return problem_response(Forbidden("faults are set from this machine only"))
        if not isinstance(self._provider, SimulatedProvider):
            return problem_response(NotFound("the payment provider is not the simulated one"))
        try:
            faults = msgspec.json.decode(await request.body(), type=ProviderFaults)
        except msgspec.ValidationError as exc:
            return problem_response(Unprocessable(str(exc)))
        except msgspec.DecodeError as exc:
            return problem_response(BadRequest(str(exc)))
        self._provider.set_faults(latency_s=faults.latency_ms / 1000, failure_rate=faults.failure_rate)
        return json_response(msgspec.to_builtins(faults))

    async def _found(self, ctx: RequestContext) -> Any:
        async with self._db.read() as conn:
            row = await store.by_id(conn, ctx.path_params["id"][:64])
        if row is None:
            raise NotFound("no such payment")
        return row

    async def _move(self, row: Any, move: Move, call: ProviderCall) -> contract.Payment:
        """Move payment `row` through the provider (idempotent by key there, conditional here)."""
        if not move.needed(row.status):
            return domain.payment(row)
        await _outage(call(row.provider_ref, f"{row.id}:{move.name}"))
        moved_at = _now()
        async with self._db.begin() as conn:
            # Conditional: of two concurrent requests only one moves it (and emits the event).
            if await store.set_status(conn, row.id, move.target, moved_at, expected=row.status):
                await events.payment_moved(
                    conn, move.target, payment_id=row.id, order_id=row.order_id, amount_cents=row.amount_cents
                )
                now = store.written({**row._mapping, "status": move.target, "updated_at": moved_at})
            else:  # the other request moved it: where to?
                now = await store.by_id(conn, row.id)
        move.check_landed(now.status)
        return domain.payment(now)

    def _capture(self, reference: str, key: str) -> Awaitable[None]:
        return self._provider.capture(reference, key=key)

    def _void(self, reference: str, key: str) -> Awaitable[None]:
        return self._provider.void(reference, key=key)

    def _refund(self, reference: str, key: str) -> Awaitable[None]:
        return self._provider.refund(reference, key=key)


async def _outage(call: Awaitable[T]) -> T:
    """`call`, a provider outage answered as 503 with Retry-After (the caller may retry)."""
    try:
        return await call
    except ProviderUnavailable as exc:
        raise ServiceUnavailable(f"payment provider unavailable: {exc}", retry_after_s=1.0) from None
