"""The payments' events: a payment authorized, captured, voided or refunded. It consumes none."""

from __future__ import annotations

from meshop.contracts.payments import (
    PAYMENT_AUTHORIZED,
    PAYMENT_CAPTURED,
    PAYMENT_REFUNDED,
    PAYMENT_VOIDED,
    PaymentAuthorized,
    PaymentCaptured,
    PaymentRefunded,
    PaymentVoided,
)
from meshop.mesh import Conn, emit


async def payment_authorized(conn: Conn, *, payment_id: str, order_id: str, amount_cents: int) -> None:
    data = PaymentAuthorized(payment_id=payment_id, order_id=order_id, amount_cents=amount_cents)
    await emit(conn, PAYMENT_AUTHORIZED, data)


async def payment_moved(conn: Conn, status: str, *, payment_id: str, order_id: str, amount_cents: int) -> None:
    """The event of a payment that reached `status` (CAPTURED, VOIDED or REFUNDED)."""
    if status == "CAPTURED":
        await emit(
            conn, PAYMENT_CAPTURED, PaymentCaptured(payment_id=payment_id, order_id=order_id, amount_cents=amount_cents)
        )
    elif status == "VOIDED":
        await emit(
            conn, PAYMENT_VOIDED, PaymentVoided(payment_id=payment_id, order_id=order_id, amount_cents=amount_cents)
        )
    elif status == "REFUNDED":
        await emit(
            conn, PAYMENT_REFUNDED, PaymentRefunded(payment_id=payment_id, order_id=order_id, amount_cents=amount_cents)
        )
    else:
        raise ValueError(f"no event announces a payment becoming {status}")
