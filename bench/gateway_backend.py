"""The gateway benchmark's backend: a minimal ASGI app served by granian.

It answers the catalog's `GET /products` with a fixed page (what the gateway routes to),
plus `/ready` and `/health` (what meshop's health checks ask).
"""

from __future__ import annotations

import json
from typing import Any

_PAGE = json.dumps(
    {
        "items": [
            {"id": f"p{n}", "sku": f"SKU-{n:03d}", "name": f"Product {n}", "price_cents": 1000 + n, "currency": "USD"}
            for n in range(3)
        ],
        "next_cursor": None,
    }
).encode()
_READY = b'{"status":"ready","service":"catalog"}'


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    path = scope["path"]
    body, status = (
        (_READY, 200) if path in ("/ready", "/health") else (_PAGE, 200) if path == "/products" else (b"{}", 404)
    )
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
