"""The payments service: cards tokenized, then authorize / capture / void / refund."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from meshop.mesh import Access, EventType, Example, Operation, outbox_operation


class Card(msgspec.Struct, kw_only=True):
    card_number: Annotated[
        str, Meta(pattern=r"^[0-9]{12,19}$", description="12 to 19 digits, no spaces", examples=["4242424242424242"])
    ]
    exp_month: Annotated[int, Meta(ge=1, le=12)]
    exp_year: Annotated[int, Meta(ge=2000, le=2100)]
    cvc: Annotated[str, Meta(pattern=r"^[0-9]{3,4}$", description="3 or 4 digits", examples=["123"])]


class PaymentMethod(msgspec.Struct, kw_only=True):
    token: str
    brand: str
    last4: str


class AuthorizeRequest(msgspec.Struct, kw_only=True):
    order_id: Annotated[str, Meta(min_length=1, max_length=64)]
    payment_method: Annotated[str, Meta(min_length=1, max_length=64)]
    amount_cents: Annotated[int, Meta(ge=1)]
    currency: Annotated[str, Meta(pattern=r"^[A-Z]{3}$", description="a three-letter currency code", examples=["USD"])]


PaymentStatus = Literal["AUTHORIZED", "CAPTURED", "VOIDED", "REFUNDED", "DECLINED", "FAILED"]


class Payment(msgspec.Struct, kw_only=True):
    id: str
    order_id: str
    status: PaymentStatus
    amount_cents: int
    currency: str
    decline_reason: str | None = None


TOKENIZE = Operation(
    "payments",
    "tokenize",
    "POST",
    "/internal/payment-methods",
    Card,
    PaymentMethod,
    status=201,
    summary="Store a card, return its token (with an Idempotency-Key, a repeat returns the first token)",
    callers=("orders",),
    per_try_timeout_s=0.75,  # no provider call: one database write
)
AUTHORIZE = Operation(
    "payments",
    "authorize",
    "POST",
    "/internal/payments",
    AuthorizeRequest,
    Payment,
    requires_key=True,
    errors=(404,),
    summary="Authorize an amount (a decline is a result, not an error)",
    callers=("orders",),
)
CAPTURE: Operation[None, Payment] = Operation(
    "payments",
    "capture",
    "POST",
    "/internal/payments/{id}/capture",
    None,
    Payment,
    idempotent=True,
    errors=(409,),
    summary="Capture an authorization",
    callers=("orders",),
)
VOID: Operation[None, Payment] = Operation(
    "payments",
    "void",
    "POST",
    "/internal/payments/{id}/void",
    None,
    Payment,
    idempotent=True,
    errors=(409,),
    summary="Cancel an authorization",
    callers=("orders",),
)


class UndoRequest(msgspec.Struct, kw_only=True):
    """Undo by the forward step's idempotency key: the effect may not exist yet, or ever."""

    order_id: Annotated[str, Meta(min_length=1, max_length=64)]


VOID_BY_KEY: Operation[UndoRequest, Payment] = Operation(
    "payments",
    "void_by_key",
    "POST",
    "/internal/payments/void-by-key",
    UndoRequest,
    Payment,
    requires_key=True,
    idempotent=True,
    errors=(409,),
    summary="Void the authorization made with this Idempotency-Key; if none exists yet, none ever will",
    callers=("orders",),
)
REFUND: Operation[None, Payment] = Operation(
    "payments",
    "refund",
    "POST",
    "/internal/payments/{id}/refund",
    None,
    Payment,
    idempotent=True,
    errors=(409,),
    summary="Refund a capture",
    callers=("orders",),
)


class AdminPayment(msgspec.Struct, kw_only=True):
    order_id: str
    status: PaymentStatus
    authorized_cents: int
    captured_cents: int
    voided_cents: int
    refunded_cents: int


class AdminPaymentPage(msgspec.Struct, kw_only=True):
    items: list[AdminPayment]
    next_cursor: str | None


ADMIN_PAYMENTS: Operation[None, AdminPaymentPage] = Operation(
    "payments",
    "admin_payments",
    "GET",
    "/admin/payments",
    None,
    AdminPaymentPage,
    Access.ADMIN,
    idempotent=True,
    errors=(422,),
    summary="Every payment with its authorized, captured, voided and refunded amounts",
)

ADMIN_OUTBOX = outbox_operation("payments")


# Events (emitted in the transaction of the change they announce; see meshop.mesh.emit).


class PaymentAuthorized(msgspec.Struct, kw_only=True, frozen=True):
    payment_id: str
    order_id: str
    amount_cents: int


class PaymentCaptured(msgspec.Struct, kw_only=True, frozen=True):
    payment_id: str
    order_id: str
    amount_cents: int


class PaymentVoided(msgspec.Struct, kw_only=True, frozen=True):
    payment_id: str
    order_id: str
    amount_cents: int


class PaymentRefunded(msgspec.Struct, kw_only=True, frozen=True):
    payment_id: str
    order_id: str
    amount_cents: int


PAYMENT_AUTHORIZED = EventType(source="payments", name="PaymentAuthorized", data=PaymentAuthorized)
PAYMENT_CAPTURED = EventType(source="payments", name="PaymentCaptured", data=PaymentCaptured)
PAYMENT_VOIDED = EventType(source="payments", name="PaymentVoided", data=PaymentVoided)
PAYMENT_REFUNDED = EventType(source="payments", name="PaymentRefunded", data=PaymentRefunded)


# What /docs and /openapi.json show for each operation (every one validates: tests/gateway).
#: A card the simulated processor approves.
EXAMPLE_CARD = Card(card_number="4242424242424242", exp_month=12, exp_year=2031, cvc="123")
EXAMPLES: dict[Operation[Any, Any], Example] = {
    ADMIN_PAYMENTS: Example(
        response=AdminPaymentPage(
            items=[
                AdminPayment(
                    order_id="0b7e2c1a-54f3-4d2e-8a61-9f3b7c5d2e10",
                    status="CAPTURED",
                    authorized_cents=9000,
                    captured_cents=9000,
                    voided_cents=0,
                    refunded_cents=0,
                )
            ],
            next_cursor=None,
        )
    ),
}
