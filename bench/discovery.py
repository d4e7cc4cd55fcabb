"""Discovery benchmark: registration, discovery (cached and cold), health check, pick.

Runs against its own embedded nats-server. Prints p50/p99 next to seed 001's Hyperlane
row (registration 0.5 ms, discovery 0.8 ms, health check 1.2 ms, load balancing 0.3 ms)
and baselines measured in the same run: one raw nats-py request-reply round trip, and
registration on a file-storage bucket (the design before decision 0009).

    python bench/discovery.py [--samples 2000] [--smoke]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

import aiohttp
import msgspec
import nats
from nats.js.api import KeyValueConfig, StorageType
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

from _common import add_smoke, row, table
from meshop.mesh.client.balancing import PeakEwma
from meshop.mesh.registry import Instance, NatsKvRegistry
from meshop.mesh.transport.server import HttpServer
from meshop.runtime.nats_server import EmbeddedNats

HYPERLANE_MS = {
    "registration": 0.5,
    "discovery (cached)": 0.8,
    "discovery (cold)": 0.8,
    "health check": 1.2,
    "balancer pick": 0.3,
}
BATCH = 25


async def main(count: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedNats(Path(tmp) / "store")
        url = await server.start()
        nc = await nats.connect(url)
        try:
            samples: dict[str, list[float]] = {}

            # Baseline: a raw NATS request-reply on the same server.
            async def echo(msg: nats.aio.msg.Msg) -> None:
                await msg.respond(msg.data)

            await nc.subscribe("bench.echo", cb=echo)
            raw = []
            for _ in range(count):
                start = time.perf_counter()
                await nc.request("bench.echo", b"x", timeout=1)
                raw.append(time.perf_counter() - start)
            samples["baseline: raw NATS request"] = raw

            # Registration as a service sees it: the whole `register()` call, with the
            # process's own watch running. Same-run baseline: the same calls on a bucket
            # created with file storage (the design before decision 0009).
            js = nc.jetstream()
            await js.create_key_value(
                KeyValueConfig(bucket="bench_file", ttl=3, history=1, storage=StorageType.FILE), limit_marker_ttl=1.0
            )
            registry = NatsKvRegistry(nc, servers=url, bucket="bench_registry", ttl_s=3, heartbeat_s=1)
            on_file = NatsKvRegistry(nc, servers=url, bucket="bench_file", ttl_s=3, heartbeat_s=1)
            await registry.start()
            await on_file.start()
            for batch in range(count // 4 // BATCH):  # batches, alternated: both see the same noise
                for name, target in (("registration", registry), ("baseline: registration, file storage", on_file)):
                    instances = [
                        Instance(service="bench", instance_id=f"b{batch}-{n}", address="127.0.0.1", port=1, pid=1)
                        for n in range(BATCH)
                    ]
                    for instance in instances:
                        start = time.perf_counter()
                        await target.register(instance)
                        samples.setdefault(name, []).append(time.perf_counter() - start)
                    for instance in instances:  # keeps the heartbeat's set small
                        await target.deregister(instance)
            await on_file.stop()

            kv = await js.key_value("bench_registry")
            for n in range(count // 4):  # keys for the cold lookups, and a pool for the balancer
                instance = Instance(service="bench", instance_id=f"i{n}", address="127.0.0.1", port=1, pid=os.getpid())
                await kv.put(instance.key, msgspec.json.encode(instance))
            await asyncio.sleep(0.5)  # let the watch deliver them
            pool = list(registry.instances("bench"))[:3]  # (they expire: nothing heartbeats them)
            assert pool, "the watch delivered no registration"

            cached = []
            for _ in range(count):
                start = time.perf_counter()
                registry.instances("bench")
                cached.append(time.perf_counter() - start)
            samples["discovery (cached)"] = cached

            cold = []
            for n in range(count // 4):
                start = time.perf_counter()
                await kv.get(f"bench.i{n}")  # a lookup that goes to the server
                cold.append(time.perf_counter() - start)
            samples["discovery (cold)"] = cold

            async def ready(_request: object) -> Response:
                return Response(b'{"status":"ready"}', media_type="application/json")

            http = HttpServer(Starlette(routes=[Route("/ready", ready)]), host="127.0.0.1", port=0)
            port = await http.start()
            health = []
            async with aiohttp.ClientSession() as session:
                for _ in range(count // 2):
                    start = time.perf_counter()
                    async with session.get(f"http://127.0.0.1:{port}/ready") as resp:
                        await resp.read()
                    health.append(time.perf_counter() - start)
            samples["health check"] = health
            await http.stop()

            balancer = PeakEwma()
            picks = []
            for _ in range(count):
                start = time.perf_counter()
                balancer.pick(pool)
                picks.append(time.perf_counter() - start)
            samples["balancer pick"] = picks
            await registry.stop()
        finally:
            await nc.close()
            await server.stop()

    rows = []
    for name, values in samples.items():
        n, p50, p99, _mean = row(name, values)
        ref = HYPERLANE_MS.get(name)
        rows.append((n, p50, p99, ref if ref is not None else "-", f"{ref / p50:.1f}x faster" if ref else "-"))
    table("discovery operations (ms)", rows, ["operation", "p50", "p99", "Hyperlane p50", "vs Hyperlane"])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=2000, help="samples per operation, fewer for some (2000)")
    add_smoke(parser)
    opts = parser.parse_args()
    asyncio.run(main(200 if opts.smoke else max(opts.samples, 4 * BATCH)))
