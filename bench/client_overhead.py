"""The resilience chain's cost: `ServiceClient.call` vs a raw aiohttp request.

Both hit the same endpoint (a Starlette route on the mesh's embedded uvicorn, in another
process so client CPU is measured alone), alternating in rounds so drift hits both.
Prints p50/p99 latency and client CPU per call, and the overhead ratio.

    python bench/client_overhead.py
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import msgspec

from _common import pct, table
from meshop.mesh.client import ServiceClient, new_session
from meshop.mesh.operation import Access, Operation
from meshop.mesh.registry import Instance, StaticRegistry
from meshop.runtime.nats_server import free_port

SERVER = """
import asyncio, sys, uvloop
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route
from meshop.mesh.server import HttpServer
async def item(request):
    return Response(b'{"id":"1","name":"thing"}', media_type="application/json")
async def main():
    server = HttpServer(Starlette(routes=[Route("/item", item)]), host="127.0.0.1", port=int(sys.argv[1]))
    await server.start()
    await asyncio.Event().wait()
uvloop.install()
asyncio.run(main())
"""


class Item(msgspec.Struct):
    id: str
    name: str


GET_ITEM: Operation[None, Item] = Operation("bench", "get", "GET", "/item", None, Item, Access.PUBLIC, idempotent=True)
ROUNDS, PER_ROUND = 10, 300


async def main() -> None:
    port = free_port()
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(port)])  # noqa: ASYNC220 (returns at once)
    try:
        instance = Instance(service="bench", instance_id="a", address="127.0.0.1", port=port, pid=server.pid)
        registry = StaticRegistry([instance])
        async with new_session() as session:
            for _ in range(100):  # wait for the server, warm up both paths
                try:
                    async with session.get(f"http://127.0.0.1:{port}/item") as resp:
                        await resp.read()
                    break
                except OSError:
                    await asyncio.sleep(0.05)
            client = ServiceClient(registry, session)
            url = f"http://127.0.0.1:{port}/item"

            async def raw() -> None:
                async with session.get(url) as resp:
                    msgspec.json.decode(await resp.read(), type=Item)

            async def chained() -> None:
                await client.call(GET_ITEM)

            latencies: dict[str, list[float]] = {"raw aiohttp (baseline)": [], "ServiceClient.call": []}
            cpu: dict[str, float] = dict.fromkeys(latencies, 0.0)
            for fn in (raw, chained):
                for _ in range(200):
                    await fn()
            for _ in range(ROUNDS):
                for name, fn in (("raw aiohttp (baseline)", raw), ("ServiceClient.call", chained)):
                    cpu_start = time.process_time()
                    for _ in range(PER_ROUND):
                        start = time.perf_counter()
                        await fn()
                        latencies[name].append(time.perf_counter() - start)
                    cpu[name] += time.process_time() - cpu_start
    finally:
        server.terminate()
        server.wait()
    base50 = pct(latencies["raw aiohttp (baseline)"], 0.5)
    base_cpu = cpu["raw aiohttp (baseline)"]
    rows = []
    for name, values in latencies.items():
        p50 = pct(values, 0.5)
        rows.append(
            (
                name,
                p50 * 1000,
                pct(values, 0.99) * 1000,
                cpu[name] / len(values) * 1e6,
                f"{p50 / base50:.2f}x (+{(p50 - base50) * 1e6:.0f} us)",
                f"{cpu[name] / base_cpu:.2f}x",
            )
        )
    table(
        f"client call overhead ({ROUNDS * PER_ROUND} calls each, pid {os.getpid()})",
        rows,
        ["path", "p50 ms", "p99 ms", "client CPU us/call", "p50 vs raw", "CPU vs raw"],
    )


if __name__ == "__main__":
    import uvloop

    uvloop.install()
    asyncio.run(main())
