"""A tokenize sent again with its idempotency key stores the card once (SQLite and PostgreSQL).

orders keys each checkout's tokenize, so one that timed out on a payments replica can be
retried on another (its per-try timeout is short) without storing the card twice.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import sqlalchemy as sa

import meshop.services.payments.app as payments_app
from meshop.mesh.testing import TestMesh
from meshop.services.payments import store

pytestmark = pytest.mark.integration

CARD = {"card_number": "4242424242424242", "exp_month": 12, "exp_year": 2099, "cvc": "123"}


async def tokenize(session: aiohttp.ClientSession, url: str, key: str | None) -> dict[str, Any]:
    headers = {"idempotency-key": key} if key else {}
    async with session.post(url + "/internal/payment-methods", json=CARD, headers=headers) as resp:
        assert resp.status == 201, await resp.text()
        body: dict[str, Any] = await resp.json()
        return body


async def test_a_keyed_tokenize_stores_the_card_once_however_often_it_is_sent(
    tmp_path: Path, mesh_database_url: str | None
) -> None:
    async with TestMesh(tmp_path, database_url=mesh_database_url) as mesh:
        payments = await mesh.start(payments_app.DEFINITION)
        url, db = await payments.serve_http(), payments.database
        async with aiohttp.ClientSession(headers=mesh.identity_headers("orders", "payments")) as session:
            first = await tokenize(session, url, "tokenize-k1")
            again = await tokenize(session, url, "tokenize-k1")
            racing = await asyncio.gather(*(tokenize(session, url, "tokenize-k2") for _ in range(5)))
            unkeyed = [await tokenize(session, url, None) for _ in range(2)]
            assert again == first
            assert len({m["token"] for m in racing}) == 1
            assert unkeyed[0]["token"] != unkeyed[1]["token"]  # no key: every call is a new method
            async with db.read() as conn:
                stored = (await conn.execute(sa.select(sa.func.count()).select_from(store.payment_methods))).scalar()
            assert stored == 1 + 1 + 2
