"""Failover benchmark: how fast a killed instance leaves every view, and a new one gets traffic.

A child process serves HTTP and registers in the NATS KV registry (the default heartbeat
and TTL: 0.75 s and 2.25 s); this process watches the registry like every meshop client does.
Each round: start a child, time until a `ServiceClient` call is answered by it; kill -9
it, time until it is gone from the view. References (not measured here): Eureka evicts
after 90 s by default, Moleculer after 30 s.

    python bench/failover.py --rounds 5 [--smoke]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nats

from _common import add_smoke, pct, table
from meshop.mesh.api.operation import Access, Operation
from meshop.mesh.client.client import ServiceClient
from meshop.mesh.registry import NatsKvRegistry
from meshop.mesh.resilience.config import Policies
from meshop.mesh.service.settings import Settings
from meshop.runtime.nats_server import EmbeddedNats

CHILD = """
import asyncio, os, sys, time, uuid, nats
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route
from meshop.mesh.registry import Instance, NatsKvRegistry
from meshop.mesh.transport.server import HttpServer
TTL, HEARTBEAT = float(sys.argv[3]), float(sys.argv[4])
async def main():
    name = sys.argv[2]
    async def who(request):
        return JSONResponse({"instance": name})
    server = HttpServer(Starlette(routes=[Route("/who", who)]), host="127.0.0.1", port=0)
    port = await server.start()
    nc = await nats.connect(sys.argv[1])
    registry = NatsKvRegistry(nc, servers=sys.argv[1], bucket="failover", ttl_s=TTL, heartbeat_s=HEARTBEAT)
    await registry.start()
    me = Instance(service="echo", instance_id=name, address="127.0.0.1", port=port, pid=os.getpid())
    await registry.register(me)
    await asyncio.Event().wait()
asyncio.run(main())
"""

WHO: Operation[None, dict[str, str]] = Operation(
    "echo", "who", "GET", "/who", None, dict, Access.PUBLIC, idempotent=True
)
DEFAULTS = Settings()


async def main(rounds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedNats(Path(tmp) / "store")
        url = await server.start()
        nc = await nats.connect(url)
        ttl, heartbeat = DEFAULTS.registry_ttl_s, DEFAULTS.heartbeat_s
        view = NatsKvRegistry(nc, servers=url, bucket="failover", ttl_s=ttl, heartbeat_s=heartbeat)
        await view.start()
        to_traffic, to_gone = [], []
        try:
            client = ServiceClient(view, policies=Policies({"default": {"balancer": "round_robin"}}))
            for n in range(rounds):
                name = f"child{n}"
                started = time.monotonic()
                argv = [sys.executable, "-c", CHILD, url, name, str(ttl), str(heartbeat)]
                child = subprocess.Popen(argv)  # noqa: ASYNC220
                while True:
                    try:
                        if (await client.call(WHO, timeout_s=1.0)).get("instance") == name:
                            break
                    except Exception:
                        pass
                    await asyncio.sleep(0.005)
                to_traffic.append(time.monotonic() - started)
                killed = time.monotonic()
                os.kill(child.pid, signal.SIGKILL)
                child.wait()
                while any(i.instance_id == name for i in view.instances("echo")):  # noqa: ASYNC110
                    await asyncio.sleep(0.005)
                to_gone.append(time.monotonic() - killed)
                print(f"round {n + 1}: new instance served after {to_traffic[-1]:.2f}s, gone after {to_gone[-1]:.2f}s")
        finally:
            await view.stop()
            await nc.close()
            await server.stop()
    table(
        "failover (seconds)",
        [
            ("killed instance leaves the view", pct(to_gone, 0.5), max(to_gone), "< 3.0", "90 / 30"),
            ("new instance gets traffic (incl. process start)", pct(to_traffic, 0.5), max(to_traffic), "-", "-"),
        ],
        ["event", "p50", "max", "target", "Eureka / Moleculer"],
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    add_smoke(parser)
    opts = parser.parse_args()
    asyncio.run(main(1 if opts.smoke else opts.rounds))
