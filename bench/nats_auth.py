"""What NATS users and permissions cost: connect and request-reply, open server vs the shop's users.

Each configuration gets its own embedded nats-server; `orders` requests
`meshop.rpc.payments.capture.<instance>` of a `payments` responder (both with the shop's
credentials and permissions, or both anonymous on an open server). Configurations
alternate over `--runs` runs so drift on a shared machine hits both (decision 0019).

    python bench/nats_auth.py [--runs 3] [--requests 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import nats
from nats.aio.msg import Msg

from meshop.mesh.security.nats_auth import NatsLogin
from meshop.runtime.nats_server import EmbeddedNats
from meshop.runtime.nats_users import credentials_file, ensure_users, render_server_config

SUBJECT = "meshop.rpc.payments.capture.instance-1"


async def measure(*, auth: bool, requests: int) -> tuple[float, float]:
    """(ms per connect, µs per request-reply: the median of five rounds)."""
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        server = EmbeddedNats(
            data_dir / "nats", authorization=render_server_config(ensure_users(data_dir)) if auth else None
        )
        url = await server.start()

        def options(user: str) -> dict[str, Any]:
            return NatsLogin.load(credentials_file(data_dir, user)).options() if auth else {}

        try:
            started = time.perf_counter()
            for _ in range(50):
                await (await nats.connect(url, **options("orders"))).close()
            connect_ms = (time.perf_counter() - started) / 50 * 1000
            payments = await nats.connect(url, **options("payments"))
            orders = await nats.connect(url, **options("orders"))

            async def answer(msg: Msg) -> None:
                await msg.respond(b'{"status": "CAPTURED"}')

            await payments.subscribe(SUBJECT, cb=answer)
            await payments.flush()
            for _ in range(200):  # warm-up
                await orders.request(SUBJECT, b"{}", timeout=2)
            rounds = []
            for _ in range(5):
                started = time.perf_counter()
                for _ in range(requests // 5):
                    await orders.request(SUBJECT, b"{}", timeout=2)
                rounds.append((time.perf_counter() - started) / (requests // 5) * 1e6)
            await orders.close()
            await payments.close()
            return connect_ms, statistics.median(rounds)
        finally:
            await server.stop()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--requests", type=int, default=1000)
    args = parser.parse_args()
    for run in range(1, args.runs + 1):
        for auth in (False, True):
            connect_ms, request_us = await measure(auth=auth, requests=args.requests)
            label = "users + permissions" if auth else "open server"
            print(f"run {run}  {label:<20} connect {connect_ms:6.2f} ms   request-reply {request_us:7.1f} µs")


if __name__ == "__main__":
    asyncio.run(main())
