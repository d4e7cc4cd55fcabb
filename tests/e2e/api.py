"""The shop as a test sees it from outside: its HTTP API through the gateway, and its metrics."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import aiohttp

from tests.e2e.conftest import Shop

APPROVE = "4242424242424242"
DECLINE = "4000000000000002"


def order_body(
    sku: str = "KIT-001", quantity: int = 2, card: str = APPROVE, country: str = "US", **extra: Any
) -> dict[str, Any]:
    return {
        "items": [{"sku": sku, "quantity": quantity}],
        "payment": {"card_number": card, "exp_month": 12, "exp_year": 2031, "cvc": "123"},
        "shipping_address": {
            "name": "Ada",
            "line1": "1 Loop Road",
            "city": "Springfield",
            "postal_code": "12345",
            "country": country,
        },
        **extra,
    }


class Api:
    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session = session
        self.url = url + "/api"
        self.token: str | None = None

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, Any], str]:
        all_headers = dict(headers or {})
        if self.token:
            all_headers.setdefault("authorization", f"Bearer {self.token}")
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        async with self.session.request(method, self.url + path, data=data, headers=all_headers) as resp:
            text = await resp.text()
            assert resp.status < 500 or resp.status == 503, f"{method} {path} answered {resp.status}: {text}"
            payload = json.loads(text) if text else {}
            return resp.status, payload, resp.headers.get("content-type", "")

    async def signup(self) -> str:
        email = f"{uuid.uuid4().hex[:10]}@example.com"
        status, user, _ = await self.request(
            "POST", "/users/register", {"email": email, "password": "correct horse", "name": "Ada"}
        )
        assert status == 201
        status, token, _ = await self.request("POST", "/users/login", {"email": email, "password": "correct horse"})
        assert status == 200
        assert token["token_type"] == "bearer"
        assert token["expires_in"] == 900
        self.token = token["access_token"]
        return str(user["id"])

    async def stock(self, sku: str) -> int:
        status, body, _ = await self.request("GET", f"/inventory/stock/{sku}")
        assert status == 200
        return int(body["available"])

    async def settled(self, order_id: str, within_s: float = 15.0) -> dict[str, Any]:
        deadline = time.monotonic() + within_s
        while True:
            status, order, _ = await self.request("GET", f"/orders/{order_id}")
            assert status == 200
            if order["status"] != "PENDING":
                return order
            assert time.monotonic() < deadline, f"order still PENDING after {within_s}s: {order}"
            await asyncio.sleep(0.05)


async def admin_token(api: Api, shop: Shop) -> str:
    password = (shop.data_dir / "admin-password").read_text().strip()
    status, token, _ = await api.request("POST", "/users/login", {"email": "admin@meshop.local", "password": password})
    assert status == 200
    return str(token["access_token"])


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample (0 when absent)."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0
