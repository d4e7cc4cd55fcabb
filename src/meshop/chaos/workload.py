"""The chaos run's customers: concurrent checkouts through the gateway, as real clients behave.

Approving and declining cards; lines of scarce SKUs in large quantities, so they run out;
some orders sent twice at once with the same Idempotency-Key; a request that times out,
fails to connect or gets a 5xx or 429 is sent again with the same key (what a careful client
does), until the shop answers or the client gives up. Everything the shop answered is
recorded for the invariants.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from meshop.chaos.invariants import Record

APPROVE_CARD = "4242424242424242"
DECLINE_CARD = "4000000000000002"
_RETRY_STATUSES = {429, 500, 502, 503, 504}


@dataclass
class Customer:
    email: str
    password: str
    token: str = ""
    refresh_token: str = ""
    renewing: asyncio.Lock = field(default_factory=asyncio.Lock)


@dataclass
class WorkloadStats:
    attempted: int = 0
    accepted: int = 0
    duplicates_sent: int = 0
    client_retries: int = 0
    gave_up: int = 0
    token_refreshes: int = 0
    #: Final answers that were neither accepted nor retryable, by status (should stay empty).
    refused: Counter[int] = field(default_factory=Counter)
    #: Why attempts were sent again: a retryable status ("503"), "timeout" or "connection".
    retried: Counter[str] = field(default_factory=Counter)


class Workload:
    def __init__(
        self,
        url: str,
        record: Record,
        *,
        orders: int,
        concurrency: int,
        skus: list[str],
        scarce: list[str],
        rng: random.Random,
        decline_rate: float = 0.2,
        duplicate_rate: float = 0.05,
        request_timeout_s: float = 2.5,
        give_up_s: float = 60.0,
    ) -> None:
        self.url = url.rstrip("/")
        self.record = record
        self.orders = orders
        self.concurrency = concurrency
        self.skus = skus
        self.scarce = scarce
        self.rng = rng
        self.decline_rate = decline_rate
        self.duplicate_rate = duplicate_rate
        self.request_timeout_s = request_timeout_s
        self.give_up_s = give_up_s
        self.stats = WorkloadStats()
        self.customers: list[Customer] = []
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Workload:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.request_timeout_s),
            connector=aiohttp.TCPConnector(limit=self.concurrency * 4),
        )
        return self

    async def __aexit__(self, *_exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    async def sign_up(self, count: int) -> None:
        """Register and log in `count` customers (one per worker)."""
        run = uuid.uuid4().hex[:8]

        async def one(n: int) -> Customer:
            customer = Customer(email=f"chaos-{run}-{n}@example.com", password=f"pw-{run}-{n}-secret")
            body = {"email": customer.email, "password": customer.password, "name": f"Chaos {n}"}
            status, _ = await self._send("POST", "/api/users/register", body)
            if status not in (201, 409):
                raise RuntimeError(f"could not register a customer: {status}")
            await self._log_in(customer)
            return customer

        self.customers = list(await asyncio.gather(*(one(n) for n in range(count))))

    async def _log_in(self, customer: Customer) -> None:
        body = {"email": customer.email, "password": customer.password}
        status, token = await self._send("POST", "/api/users/login", body)
        if status != 200:
            raise RuntimeError(f"could not log in a customer: {status}")
        customer.token, customer.refresh_token = token["access_token"], token["refresh_token"]

    async def _renew(self, customer: Customer, expired: str) -> None:
        """The access token expired (runs outlive its 15 minutes): refresh it, as a client does."""
        async with customer.renewing:
            if customer.token != expired:  # another request of this customer renewed it already
                return
            self.stats.token_refreshes += 1
            status, token = await self._send("POST", "/api/users/refresh", {"refresh_token": customer.refresh_token})
            if status == 200:
                customer.token, customer.refresh_token = token["access_token"], token["refresh_token"]
            else:  # the refresh was lost in a fault and reused: log in again
                await self._log_in(customer)

    async def _send(self, method: str, path: str, body: Any, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        """One request, retried on transport failures and retryable answers until `give_up_s`."""
        assert self._session is not None
        deadline = time.monotonic() + self.give_up_s
        delay = 0.1
        while True:
            try:
                async with self._session.request(method, self.url + path, json=body, headers=headers) as resp:
                    data = await resp.json(content_type=None)
                    if resp.status not in _RETRY_STATUSES:
                        return resp.status, data
                    reason = str(resp.status)
            except TimeoutError:
                reason = "timeout"
            except aiohttp.ClientError:
                reason = "connection"
            except ValueError:
                reason = "unreadable answer"
            if time.monotonic() + delay > deadline:
                return 0, None
            self.stats.client_retries += 1
            self.stats.retried[reason] += 1
            await asyncio.sleep(delay * (0.5 + self.rng.random()))
            delay = min(delay * 2, 2.0)

    def _order_body(self) -> dict[str, Any]:
        rng = self.rng
        lines = {sku: rng.randint(1, 3) for sku in rng.sample(self.skus, rng.randint(1, 3))}
        if self.scarce and rng.random() < 0.3:
            lines[rng.choice(self.scarce)] = rng.randint(20, 60)
        card = DECLINE_CARD if rng.random() < self.decline_rate else APPROVE_CARD
        return {
            "items": [{"sku": sku, "quantity": qty} for sku, qty in lines.items()],
            "payment": {"card_number": card, "exp_month": 12, "exp_year": 2099, "cvc": "123"},
            "shipping_address": {
                "name": "Chaos Customer",
                "line1": "1 Fault Lane",
                "city": "Resilience",
                "postal_code": "12345",
                "country": "US",
            },
        }

    async def _checkout(self, customer: Customer) -> None:
        key = uuid.uuid4().hex
        body = self._order_body()
        self.record.answers[key] = set()
        copies = 1
        if self.rng.random() < self.duplicate_rate:  # a double-clicked "buy" button
            copies = 2
            self.stats.duplicates_sent += 1
        for _ in range(3):
            token = customer.token
            headers = {"authorization": f"Bearer {token}", "idempotency-key": key}
            answers = await asyncio.gather(*(self._send("POST", "/api/orders", body, headers) for _ in range(copies)))
            if all(status != 401 for status, _ in answers):
                break
            await self._renew(customer, token)  # then the same order again, with the same key
        for status, data in answers:
            if status in (200, 202) and isinstance(data, dict) and "id" in data:
                self.record.answers[key].add(data["id"])
                self.record.accepted[data["id"]] = key
            elif status == 0:
                self.stats.gave_up += 1
            else:
                self.stats.refused[status] += 1
        if self.record.answers[key]:
            self.stats.accepted += 1

    async def run(self) -> None:
        """Place orders from every customer at once until `orders` were attempted."""

        async def worker(customer: Customer) -> None:
            while self.stats.attempted < self.orders:
                self.stats.attempted += 1
                await self._checkout(customer)

        await asyncio.gather(*(worker(c) for c in self.customers))
