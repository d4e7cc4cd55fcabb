"""The resilience chain's cost: `ServiceClient.call` vs a raw aiohttp request.

All paths hit the same operation, served in another process (so client CPU is measured
alone) over HTTP (the mesh's lean server) and over NATS (an embedded nats-server),
alternating in rounds so drift hits every path. Prints p50/p99 latency, client CPU per
call, and ratios against raw aiohttp (the baseline): raw nats-py shows NATS's own cost.
The identity rows call an INTERNAL operation with a service identity, which the server
verifies against its allow-list (docs/decisions/0020): their difference with the rows
above is what proving who calls costs.
The chain's own CPU is measured last with no network at all: a `ServiceClient` whose
HTTP transport (its public `http=` seam) answers every try at once.

    python bench/client_overhead.py [--rounds 10] [--per-round 300] [--smoke]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from math import nan
from pathlib import Path

import aiohttp
import msgspec
import nats

from _common import add_smoke, pct, table
from meshop.mesh.api.operation import Access, Operation
from meshop.mesh.client.client import ServiceClient
from meshop.mesh.client.zones import Locality
from meshop.mesh.registry import Instance, StaticRegistry
from meshop.mesh.security.identity import CredentialFiles, TokenMinter, provision
from meshop.mesh.transport.exchange import Reply
from meshop.runtime.nats_server import EmbeddedNats, free_port

SERVER = """
import asyncio, sys, uvloop, nats
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route
from meshop.mesh.transport.server import HttpServer
from meshop.mesh.api.routing import Api, serving
from meshop.mesh.transport.nats import serve
from meshop.mesh.security.identity import CredentialFiles
from pathlib import Path
sys.path.insert(0, sys.argv[3])
from client_overhead import GET_ITEM, GET_INTERNAL, Item
async def main():
    api = Api("bench")
    api.callers = CredentialFiles(Path(sys.argv[4]), "bench").verifier
    @api.implement(GET_ITEM)
    async def item(ctx, body):
        return Item(id="1", name="thing")
    @api.implement(GET_INTERNAL)
    async def internal(ctx, body):
        return Item(id="1", name="thing")
    server = HttpServer(serving(api.routes()), host="127.0.0.1", port=int(sys.argv[1]))
    await server.start()
    nc = await nats.connect(sys.argv[2])
    await serve(nc, api, "a")
    async def raw(msg):
        await msg.respond(b'{"id":"1","name":"thing"}')
    await nc.subscribe("bench.raw", cb=raw)
    await asyncio.Event().wait()
uvloop.install()
asyncio.run(main())
"""


class Item(msgspec.Struct):
    id: str
    name: str


GET_ITEM: Operation[None, Item] = Operation("bench", "get", "GET", "/item", None, Item, Access.PUBLIC, idempotent=True)
GET_INTERNAL: Operation[None, Item] = Operation(
    "bench", "internal", "GET", "/internal/item", None, Item, idempotent=True, callers=("caller",)
)


class NoNetwork:
    """An HTTP transport that answers every try at once with a canned reply.

    Given to `ServiceClient(http=...)`, it leaves the chain's own work: what a call costs
    beyond its exchange. (Not a `ServiceClient` subclass: the client is compiled with mypyc,
    and an interpreted class cannot inherit from a compiled one.)
    """

    async def request(self, *_args: object) -> Reply:
        return Reply(200, {}, b'{"id":"1","name":"thing"}')

    def send(self, *_args: object) -> bool:
        return False  # no idle connection: `start` goes on through `request`

    async def close(self) -> None:
        pass


async def chain_cpu_us(
    calls: int, warmup: int, identity: TokenMinter | None = None, zones: tuple[str, str] | None = None
) -> float:
    """CPU per `ServiceClient.call` with no network at all (2 instances, peak-EWMA).

    `zones`: the two instances' zones, for a zone-aware caller in the first one.
    """
    pool = [
        Instance(service="bench", instance_id=n, address="127.0.0.1", port=1, pid=0, zone=zone)
        for n, zone in zip("ab", zones or ("local", "local"), strict=True)
    ]
    locality = Locality(zone=zones[0]) if zones else None
    client = ServiceClient(StaticRegistry(pool), http=NoNetwork(), locality=locality)
    client.identity = identity
    op = GET_ITEM if identity is None else GET_INTERNAL
    for _ in range(warmup):
        await client.call(op)
    start = time.process_time()
    for _ in range(calls):
        await client.call(op)
    return (time.process_time() - start) / calls * 1e6


async def main(rounds: int, per_round: int, chain_calls: int) -> None:
    port = free_port()
    tmp = tempfile.TemporaryDirectory()
    broker = EmbeddedNats(Path(tmp.name) / "store")
    nats_url = await broker.start()
    bench_dir = str(Path(__file__).parent)
    identity_dir = Path(tmp.name) / "identity"
    provision(identity_dir, ["bench", "caller"])
    identity = CredentialFiles(identity_dir, "caller").minter
    server = subprocess.Popen(  # noqa: ASYNC220
        [sys.executable, "-c", SERVER, str(port), nats_url, bench_dir, str(identity_dir)]
    )
    nc = await nats.connect(nats_url)
    try:
        instance = Instance(service="bench", instance_id="a", address="127.0.0.1", port=port, pid=server.pid)
        registry = StaticRegistry([instance])
        async with aiohttp.ClientSession() as session:  # the raw baseline
            for _ in range(100):  # wait for the server, warm up both paths
                try:
                    async with session.get(f"http://127.0.0.1:{port}/item") as resp:
                        await resp.read()
                    break
                except OSError:
                    await asyncio.sleep(0.05)
            client = ServiceClient(registry, nc=nc)
            client.identity = identity
            url = f"http://127.0.0.1:{port}/item"
            await asyncio.sleep(0.5)  # the server subscribes to NATS after binding HTTP

            async def raw() -> None:
                async with session.get(url) as resp:
                    msgspec.json.decode(await resp.read(), type=Item)

            async def chained() -> None:
                await client.call(GET_ITEM)

            async def raw_nats() -> None:
                msgspec.json.decode((await nc.request("bench.raw", b"", timeout=2)).data, type=Item)

            async def chained_nats() -> None:
                await client.call(GET_ITEM, transport="nats")

            async def identified() -> None:
                await client.call(GET_INTERNAL)

            async def identified_nats() -> None:
                await client.call(GET_INTERNAL, transport="nats")

            paths = {
                "raw aiohttp (baseline)": raw,
                "ServiceClient.call, HTTP": chained,
                "raw nats-py request": raw_nats,
                "ServiceClient.call, NATS": chained_nats,
                "ServiceClient.call + identity, HTTP": identified,
                "ServiceClient.call + identity, NATS": identified_nats,
            }
            latencies: dict[str, list[float]] = {name: [] for name in paths}
            cpu: dict[str, float] = dict.fromkeys(latencies, 0.0)
            for fn in paths.values():
                for _ in range(min(200, per_round)):
                    await fn()
            for _ in range(rounds):
                for name, fn in paths.items():
                    cpu_start = time.process_time()
                    for _ in range(per_round):
                        start = time.perf_counter()
                        await fn()
                        latencies[name].append(time.perf_counter() - start)
                    cpu[name] += time.process_time() - cpu_start
    finally:
        server.terminate()
        server.wait()
        await nc.close()
        await broker.stop()
        tmp.cleanup()
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
    own = await chain_cpu_us(chain_calls, warmup=chain_calls // 10)
    rows.append(("the chain itself, no network (stub transport)", float("nan"), float("nan"), own, "-", "-"))
    with_identity = await chain_cpu_us(chain_calls, warmup=chain_calls // 10, identity=identity)
    rows.append(("the chain + identity, no network", float("nan"), float("nan"), with_identity, "-", "-"))
    for label, zones in (("one zone", ("z1", "z1")), ("two zones", ("z1", "z2"))):
        zoned = await chain_cpu_us(chain_calls, warmup=chain_calls // 10, zones=zones)
        rows.append((f"the chain, zone-aware ({label}), no network", nan, nan, zoned, "-", f"{zoned / own:.2f}x"))
    table(
        f"client call overhead ({rounds * per_round} calls each, pid {os.getpid()})",
        rows,
        ["path", "p50 ms", "p99 ms", "client CPU us/call", "p50 vs raw", "CPU vs raw"],
    )


if __name__ == "__main__":
    import uvloop

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10, help="rounds of every path, alternating (default 10)")
    parser.add_argument("--per-round", type=int, default=300, help="calls per path per round (default 300)")
    add_smoke(parser)
    opts = parser.parse_args()
    uvloop.install()
    if opts.smoke:
        asyncio.run(main(rounds=1, per_round=50, chain_calls=1000))
    else:
        asyncio.run(main(opts.rounds, opts.per_round, chain_calls=20000))
