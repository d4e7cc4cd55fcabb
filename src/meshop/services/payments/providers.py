"""The payment provider adapter (`PaymentProvider`) and the simulated provider behind it.

`PaymentProvider` is the interface a real provider's adapter implements. The default,
`SimulatedProvider`, is a simulation and says so: it approves the test card
4242424242424242, declines 4000000000000002 (like common providers' test cards), and
can add latency and fail a configurable fraction of calls with a retryable outage.
Cards are tokenized first; only the token, brand and last four digits are kept.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, Protocol

from meshop.contracts.payments import Card
from meshop.mesh import MeshError, Unprocessable

Behaviour = Literal["approve", "decline"]

APPROVE_CARD = "4242424242424242"
DECLINE_CARD = "4000000000000002"


class ProviderUnavailable(MeshError):
    """The provider failed in a way that is not a decline; the same call may be retried."""

    retryable = True


@dataclass(frozen=True, slots=True)
class Tokenized:
    token: str
    brand: str
    last4: str
    behaviour: Behaviour


@dataclass(frozen=True, slots=True)
class Authorization:
    approved: bool
    reference: str
    decline_reason: str | None = None


class PaymentProvider(Protocol):
    """What meshop needs from a card processor. Every call is idempotent by `key`."""

    name: str

    def tokenize(self, card: Card) -> Tokenized: ...

    async def authorize(self, method: Tokenized, amount_cents: int, currency: str, *, key: str) -> Authorization: ...

    async def capture(self, reference: str, *, key: str) -> None: ...

    async def void(self, reference: str, *, key: str) -> None: ...

    async def refund(self, reference: str, *, key: str) -> None: ...


def luhn_ok(number: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(number)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def validate_card(card: Card, *, today: datetime | None = None) -> None:
    """Reject cards that no provider would accept (422)."""
    now = today or datetime.now(UTC)
    if not luhn_ok(card.card_number):
        raise Unprocessable(
            "card_number fails the Luhn check", errors=[{"field": "payment.card_number", "error": "invalid"}]
        )
    if (card.exp_year, card.exp_month) < (now.year, now.month):
        raise Unprocessable("the card has expired", errors=[{"field": "payment.exp_year", "error": "expired"}])


def _brand(number: str) -> str:
    if number.startswith("4"):
        return "visa"
    if number[:2] in {"51", "52", "53", "54", "55"} or (number[:4].isdigit() and 2221 <= int(number[:4]) <= 2720):
        return "mastercard"
    if number[:2] in {"34", "37"}:
        return "amex"
    return "unknown"


class SimulatedProvider:
    """A simulated card processor (no money moves). Named as such in every answer."""

    name = "simulated"

    def __init__(self, *, latency_s: float = 0.0, failure_rate: float = 0.0, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()
        self.set_faults(latency_s=latency_s, failure_rate=failure_rate)

    def set_faults(self, *, latency_s: float, failure_rate: float) -> None:
        """How slow and how unreliable the simulated processor is (chaos tests change it live)."""
        if not 0.0 <= failure_rate <= 1.0 or latency_s < 0:
            raise ValueError("failure_rate must be within [0, 1] and latency_s >= 0")
        self._latency_s = latency_s
        self._failure_rate = failure_rate

    def tokenize(self, card: Card) -> Tokenized:
        validate_card(card)
        behaviour: Behaviour = "decline" if card.card_number == DECLINE_CARD else "approve"
        return Tokenized(
            token=f"pm_{uuid.uuid4().hex}",
            brand=_brand(card.card_number),
            last4=card.card_number[-4:],
            behaviour=behaviour,
        )

    async def _call(self) -> None:
        if self._latency_s:
            await asyncio.sleep(self._latency_s)
        if self._failure_rate and self._rng.random() < self._failure_rate:
            raise ProviderUnavailable("simulated provider outage")

    async def authorize(self, method: Tokenized, amount_cents: int, currency: str, *, key: str) -> Authorization:
        await self._call()
        reference = f"sim_{uuid.uuid5(uuid.NAMESPACE_URL, key).hex}"
        if method.behaviour == "decline":
            return Authorization(approved=False, reference=reference, decline_reason="card_declined")
        return Authorization(approved=True, reference=reference)

    async def capture(self, reference: str, *, key: str) -> None:
        await self._call()

    async def void(self, reference: str, *, key: str) -> None:
        await self._call()

    async def refund(self, reference: str, *, key: str) -> None:
        await self._call()
