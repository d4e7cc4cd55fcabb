"""Undo by the forward step's key, when the forward call is still in flight.

The saga timed out on `authorize` (or `ship`) and compensates, while the original request
is still talking to the provider. The undo leaves a tombstone; the late request finds it
and releases what it got, so nothing stays authorized or shipped. Real HTTP, real
SQLite/PostgreSQL; the provider and carrier are simulations that block on cue.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest

import meshop.services.payments.app as payments_app
import meshop.services.shipping.app as shipping_app
from meshop.contracts.shipping import Address, Parcel
from meshop.mesh.testing import TestMesh
from meshop.services.payments.providers import Authorization, SimulatedProvider, Tokenized
from meshop.services.shipping.providers import Label, SimulatedCarrier

pytestmark = pytest.mark.integration


class SlowProvider(SimulatedProvider):
    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.entered = asyncio.Event()
        self.voided: list[str] = []

    async def authorize(self, method: Tokenized, amount_cents: int, currency: str, *, key: str) -> Authorization:
        self.entered.set()
        await self.release.wait()
        return await super().authorize(method, amount_cents, currency, key=key)

    async def void(self, reference: str, *, key: str) -> None:
        self.voided.append(reference)


class SlowCarrier(SimulatedCarrier):
    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.entered = asyncio.Event()
        self.cancelled: list[str] = []

    async def create(self, address: Address, items: list[Parcel], *, key: str) -> Label:
        self.entered.set()
        await self.release.wait()
        return await super().create(address, items, key=key)

    async def cancel(self, tracking_number: str, *, key: str) -> None:
        self.cancelled.append(tracking_number)


async def post(session: aiohttp.ClientSession, url: str, body: Any, key: str | None = None) -> dict[str, Any]:
    headers = {"idempotency-key": key} if key else {}
    async with session.post(url, json=body, headers=headers) as resp:
        assert resp.status < 300, await resp.text()
        result: dict[str, Any] = await resp.json()
        return result


async def test_a_void_by_key_before_a_late_authorization_leaves_nothing_authorized(
    tmp_path: Path, mesh_database_url: str | None
) -> None:
    provider = SlowProvider()
    # Injected the one way adapters are: the definition's factory builds this provider.
    definition = replace(payments_app.DEFINITION, adapters=lambda _settings: payments_app.Adapters(provider=provider))
    async with TestMesh(tmp_path, database_url=mesh_database_url) as mesh:
        url = await (await mesh.start(definition)).serve_http()
        async with aiohttp.ClientSession(headers=mesh.identity_headers("orders", "payments")) as session:
            card = {"card_number": "4242424242424242", "exp_month": 12, "exp_year": 2099, "cvc": "123"}
            method = await post(session, url + "/internal/payment-methods", card)
            request = {"order_id": "o1", "payment_method": method["token"], "amount_cents": 500, "currency": "USD"}
            late = asyncio.create_task(post(session, url + "/internal/payments", request, "o1:authorize"))
            await provider.entered.wait()  # the original call is at the provider; the saga gave up on it
            undone = await post(session, url + "/internal/payments/void-by-key", {"order_id": "o1"}, "o1:authorize")
            assert (undone["status"], undone["amount_cents"]) == ("VOIDED", 0)
            provider.release.set()
            answer = await late
            assert answer["status"] == "VOIDED"  # the late request found the tombstone...
            assert len(provider.voided) == 1  # ...and released the hold it got from the provider
            again = await post(session, url + "/internal/payments", request, "o1:authorize")
            assert again["id"] == undone["id"]  # one payment per key, for good


async def test_a_cancel_by_key_before_a_late_shipment_leaves_no_live_shipment(
    tmp_path: Path, mesh_database_url: str | None
) -> None:
    carrier = SlowCarrier()
    definition = replace(shipping_app.DEFINITION, adapters=lambda _settings: shipping_app.Adapters(carrier=carrier))
    async with TestMesh(tmp_path, database_url=mesh_database_url) as mesh:
        url = await (await mesh.start(definition)).serve_http()
        async with aiohttp.ClientSession(headers=mesh.identity_headers("orders", "shipping")) as session:
            address = {"name": "A", "line1": "1 Road", "city": "Town", "postal_code": "1", "country": "US"}
            request = {"order_id": "o1", "address": address, "items": [{"sku": "A", "quantity": 1}]}
            late = asyncio.create_task(post(session, url + "/internal/shipments", request, "o1:ship"))
            await carrier.entered.wait()
            undone = await post(session, url + "/internal/shipments/cancel-by-key", {"order_id": "o1"}, "o1:ship")
            assert undone["status"] == "CANCELLED"
            carrier.release.set()
            answer = await late
            assert answer["status"] == "CANCELLED"
            assert len(carrier.cancelled) == 1  # the label made meanwhile was cancelled with the carrier
