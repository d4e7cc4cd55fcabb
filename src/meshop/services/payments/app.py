"""The payments service: tokenize, authorize, capture, void, refund."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import msgspec
from sqlalchemy.exc import IntegrityError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from meshop.contracts import payments as contract
from meshop.contracts.users import remote_verifier
from meshop.mesh import (
    Api,
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    RequestContext,
    Runtime,
    ServiceDefinition,
    ServiceUnavailable,
    Unprocessable,
    from_env,
    from_loopback,
    insert_unless_present,
    json_response,
    problem_response,
    read_page,
)
from meshop.services.payments import events, store
from meshop.services.payments.domain import PaymentProvider, ProviderUnavailable, SimulatedProvider, Tokenized


class PaymentsSettings(msgspec.Struct, frozen=True, kw_only=True):
    """`MESHOP_PAYMENTS_*`: the simulated provider's latency and failure rate."""

    simulated_latency_ms: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    simulated_failure_rate: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.0


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _payment(row: Any) -> contract.Payment:
    return contract.Payment(
        id=row.id,
        order_id=row.order_id,
        status=row.status,
        amount_cents=row.amount_cents,
        currency=row.currency,
        decline_reason=row.decline_reason,
    )


def _admin_payment(row: Any) -> contract.AdminPayment:
    """Amounts by what happened to the authorization (each is all of it or nothing)."""
    status, amount = row.status, row.amount_cents
    return contract.AdminPayment(
        order_id=row.order_id,
        status=status,
        authorized_cents=amount if status in ("AUTHORIZED", "CAPTURED", "VOIDED", "REFUNDED") else 0,
        captured_cents=amount if status in ("CAPTURED", "REFUNDED") else 0,
        voided_cents=amount if status == "VOIDED" else 0,
        refunded_cents=amount if status == "REFUNDED" else 0,
    )


ProviderCall = Callable[[str, str], Awaitable[None]]


def build_with(provider: PaymentProvider) -> Callable[[Runtime], Awaitable[Api]]:
    """The payments API on `provider` (tests inject their own)."""

    async def build(runtime: Runtime) -> Api:
        db = runtime.database
        api = Api("payments", max_body_bytes=runtime.settings.max_body_bytes)

        async def outage(call: Awaitable[Any]) -> Any:
            try:
                return await call
            except ProviderUnavailable as exc:
                raise ServiceUnavailable(f"payment provider unavailable: {exc}", retry_after_s=1.0) from None

        @api.implement(contract.TOKENIZE)
        async def tokenize(ctx: RequestContext, body: contract.Card) -> contract.PaymentMethod:
            """Store the card; with an idempotency key, a repeat returns the method stored first."""
            method = provider.tokenize(body)
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
                async with db.begin() as conn:
                    await conn.execute(store.payment_methods.insert().values(**row))
            except IntegrityError:  # stored under this key already (a retry, or a concurrent one)
                if key is None:
                    raise
                async with db.read() as conn:
                    first = await store.method_by_key(conn, key)
                return contract.PaymentMethod(token=first.token, brand=first.brand, last4=first.last4)
            return contract.PaymentMethod(token=method.token, brand=method.brand, last4=method.last4)

        @api.implement(contract.AUTHORIZE)
        async def authorize(ctx: RequestContext, body: contract.AuthorizeRequest) -> contract.Payment:
            key = ctx.idempotency_key
            assert key is not None
            async with db.read() as conn:
                existing = await store.by_key(conn, key)
                method = await store.method(conn, body.payment_method)
            if existing is not None:
                return _payment(existing)
            if method is None:
                raise Unprocessable("unknown payment method")
            tokenized = Tokenized(
                token=method.token, brand=method.brand, last4=method.last4, behaviour=method.behaviour
            )
            result = await outage(provider.authorize(tokenized, body.amount_cents, body.currency, key=key))
            row = {
                "id": uuid.uuid4().hex,
                "idempotency_key": key,
                "order_id": body.order_id,
                "payment_method": body.payment_method,
                "status": "AUTHORIZED" if result.approved else "DECLINED",
                "amount_cents": body.amount_cents,
                "currency": body.currency,
                "provider": provider.name,
                "provider_ref": result.reference,
                "decline_reason": result.decline_reason,
                "updated_at": _now(),
            }
            try:
                async with db.begin() as conn:
                    await conn.execute(store.payments.insert().values(**row))
                    if row["status"] == "AUTHORIZED":
                        await events.payment_authorized(
                            conn, payment_id=row["id"], order_id=body.order_id, amount_cents=body.amount_cents
                        )
            except IntegrityError:  # a concurrent call with the same key won, or a void-by-key
                async with db.read() as conn:
                    winner = await store.by_key(conn, key)
                if winner.provider_ref == "" and result.approved:
                    # Voided before we recorded it: release the hold we just got.
                    await outage(provider.void(result.reference, key=f"{key}:late"))
                return _payment(winner)
            async with db.read() as conn:
                return _payment(await store.by_id(conn, row["id"]))

        async def change(
            row: Any, name: str, target: str, allowed_from: set[str], done: set[str], call: ProviderCall
        ) -> contract.Payment:
            """Move payment `row` to `target` through the provider (idempotent by key)."""
            if row.status == target or row.status in done:
                return _payment(row)
            if row.status not in allowed_from:
                raise Conflict(f"cannot {name} a payment that is {row.status}")
            await outage(call(row.provider_ref, f"{row.id}:{name}"))  # idempotent at the provider
            async with db.begin() as conn:
                # Conditional: of two concurrent requests only one moves it (and emits the event).
                if await store.set_status(conn, row.id, target, _now(), expected=row.status):
                    await events.payment_moved(
                        conn, target, payment_id=row.id, order_id=row.order_id, amount_cents=row.amount_cents
                    )
                now = await store.by_id(conn, row.id)
            if now.status != target and now.status not in done:
                raise Conflict(f"cannot {name} a payment that became {now.status}")
            return _payment(now)

        def transition(name: str, target: str, allowed_from: set[str], done: set[str], call: ProviderCall) -> None:
            operation = {"capture": contract.CAPTURE, "void": contract.VOID, "refund": contract.REFUND}[name]

            @api.implement(operation)
            async def handler(ctx: RequestContext, _body: None) -> contract.Payment:
                async with db.read() as conn:
                    row = await store.by_id(conn, ctx.path_params["id"][:64])
                if row is None:
                    raise NotFound("no such payment")
                return await change(row, name, target, allowed_from, done, call)

        def void(ref: str, key: str) -> Awaitable[None]:
            return provider.void(ref, key=key)

        @api.implement(contract.VOID_BY_KEY)
        async def void_by_key(ctx: RequestContext, body: contract.UndoRequest) -> contract.Payment:
            """Void what `authorize` did with this key; if it has not run yet, it never will.

            The tombstone (VOIDED, nothing authorized) makes a late `authorize` with the
            key return it; one that was already talking to the provider voids its own
            approval when it finds the tombstone.
            """
            key = ctx.idempotency_key
            assert key is not None
            tombstone = {
                "id": uuid.uuid4().hex,
                "idempotency_key": key,
                "order_id": body.order_id,
                "payment_method": "",
                "status": "VOIDED",
                "amount_cents": 0,
                "currency": "XXX",
                "provider": provider.name,
                "provider_ref": "",
                "decline_reason": "voided before it was authorized",
                "updated_at": _now(),
            }
            # If the authorization landed meanwhile, its row is returned and voided below.
            row = await insert_unless_present(db, store.payments, store.payments.c.idempotency_key == key, tombstone)
            return await change(row, "void", "VOIDED", {"AUTHORIZED"}, {"DECLINED", "FAILED"}, void)

        @api.implement(contract.ADMIN_PAYMENTS)
        async def admin_payments(ctx: RequestContext, _body: None) -> contract.AdminPaymentPage:
            items, cursor = await read_page(ctx, db, store.payments, store.payments.c.id, _admin_payment)
            return contract.AdminPaymentPage(items=items, next_cursor=cursor)

        transition("capture", "CAPTURED", {"AUTHORIZED"}, {"REFUNDED"}, lambda ref, key: provider.capture(ref, key=key))
        transition("void", "VOIDED", {"AUTHORIZED"}, {"DECLINED", "FAILED"}, void)
        transition("refund", "REFUNDED", {"CAPTURED"}, set(), lambda ref, key: provider.refund(ref, key=key))
        return api

    return build


class ProviderFaults(msgspec.Struct, kw_only=True):
    latency_ms: Annotated[float, msgspec.Meta(ge=0, le=60_000)] = 0.0
    failure_rate: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.0


async def build(runtime: Runtime) -> Api:
    settings = from_env(PaymentsSettings, "MESHOP_PAYMENTS_")
    provider = SimulatedProvider(
        latency_s=settings.simulated_latency_ms / 1000, failure_rate=settings.simulated_failure_rate
    )
    api = await build_with(provider)(runtime)
    if runtime.settings.chaos:

        async def provider_faults(request: Request) -> Response:
            """`PUT /_meshop/provider` (chaos mode, loopback only): a slow or failing provider."""
            if not from_loopback(request):
                return problem_response(Forbidden("faults are set from this machine only"))
            try:
                faults = msgspec.json.decode(await request.body(), type=ProviderFaults)
            except msgspec.ValidationError as exc:
                return problem_response(Unprocessable(str(exc)))
            except msgspec.DecodeError as exc:
                return problem_response(BadRequest(str(exc)))
            provider.set_faults(latency_s=faults.latency_ms / 1000, failure_rate=faults.failure_rate)
            return json_response(msgspec.to_builtins(faults))

        api.extra_routes.append(Route("/_meshop/provider", provider_faults, methods=["PUT"]))
    return api


DEFINITION = ServiceDefinition(
    name="payments",
    build=build,
    migrations=Path(__file__).parent / "migrations",
    verifier=remote_verifier,
    outbox=True,
)
