"""The payments' rules: how a payment moves between states, and what its amounts mean.

A payment is AUTHORIZED or DECLINED when made (or FAILED). Then:

- capture: AUTHORIZED → CAPTURED (already REFUNDED: done, nothing to do);
- void: AUTHORIZED → VOIDED (DECLINED or FAILED: nothing was held, done);
- refund: CAPTURED → REFUNDED.

Any other move is a conflict. Reaching the target state again changes nothing, so each
move is idempotent. An undo that comes before its authorization leaves a tombstone: a
VOIDED payment of nothing, which a late authorization with the same key finds and
returns (voiding the hold it got).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from meshop.contracts.payments import AdminPayment, Payment
from meshop.mesh import Conflict


@dataclass(frozen=True, slots=True)
class Move:
    """A payment's move to `target`: allowed from `allowed_from`, already done in `done`."""

    name: str
    target: str
    allowed_from: frozenset[str]
    done: frozenset[str] = frozenset()

    def needed(self, status: str) -> bool:
        """Whether a payment in `status` still has to move (False: it has, or need not)."""
        if status == self.target or status in self.done:
            return False
        if status not in self.allowed_from:
            raise Conflict(f"cannot {self.name} a payment that is {status}")
        return True

    def check_landed(self, status: str) -> None:
        """After a move: the payment, maybe moved by a concurrent request, must be where this one goes."""
        if status != self.target and status not in self.done:
            raise Conflict(f"cannot {self.name} a payment that became {status}")


CAPTURE = Move("capture", "CAPTURED", frozenset({"AUTHORIZED"}), frozenset({"REFUNDED"}))
VOID = Move("void", "VOIDED", frozenset({"AUTHORIZED"}), frozenset({"DECLINED", "FAILED"}))
REFUND = Move("refund", "REFUNDED", frozenset({"CAPTURED"}))


def tombstone(key: str, order_id: str, *, provider: str, payment_id: str, now: str) -> dict[str, Any]:
    """The row an undo leaves when it comes before the authorization of `key`."""
    return {
        "id": payment_id,
        "idempotency_key": key,
        "order_id": order_id,
        "payment_method": "",
        "status": "VOIDED",
        "amount_cents": 0,
        "currency": "XXX",
        "provider": provider,
        "provider_ref": "",
        "decline_reason": "voided before it was authorized",
        "updated_at": now,
    }


def is_tombstone(row: Any) -> bool:
    return bool(row.provider_ref == "")


def payment(row: Any) -> Payment:
    return Payment(
        id=row.id,
        order_id=row.order_id,
        status=row.status,
        amount_cents=row.amount_cents,
        currency=row.currency,
        decline_reason=row.decline_reason,
    )


def admin_payment(row: Any) -> AdminPayment:
    """Amounts by what happened to the authorization (each is all of it or nothing)."""
    status, amount = row.status, row.amount_cents
    return AdminPayment(
        order_id=row.order_id,
        status=status,
        authorized_cents=amount if status in ("AUTHORIZED", "CAPTURED", "VOIDED", "REFUNDED") else 0,
        captured_cents=amount if status in ("CAPTURED", "REFUNDED") else 0,
        voided_cents=amount if status == "VOIDED" else 0,
        refunded_cents=amount if status == "REFUNDED" else 0,
    )
