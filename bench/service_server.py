"""An operation's cost on the server: the mesh's HTTP server with Starlette's routing, or as a
process serves it (`serving`: operations straight to their endpoints, decision 0045).

    python bench/service_server.py [--rounds 3] [--seconds 4] [--smoke]

Each round starts one server process per shape, in turn, serving the same nine operations
(a shop service's mix of literal and templated paths), and sends it `--seconds` of GETs of
a templated internal path from 8 concurrent aiohttp clients in this process. Reported per
shape: requests per second and the server process's CPU per request (its own CPU time, so
the load generator's does not count), the median over rounds, and their ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time

import aiohttp
import psutil

from _common import add_smoke, table
from meshop.runtime.nats_server import free_port

SERVER = """
import asyncio, sys, uvloop, msgspec
from starlette.applications import Starlette
from meshop.mesh.api.operation import Access, Operation
from meshop.mesh.api.routing import Api, RequestContext, serving
from meshop.mesh.transport.server import HttpServer

class Answer(msgspec.Struct):
    text: str

PATHS = ["/a", "/b", "/c", "/admin/things", "/admin/things/{id}", "/internal/things",
         "/internal/things/{id}/commit", "/internal/things/{id}/release", "/things/{id}"]

async def main():
    api = Api("bench")
    for n, path in enumerate(PATHS):
        async def answer(ctx: RequestContext, _body: None) -> Answer:
            return Answer(text="ok")
        api.implement(Operation("bench", f"op{n}", "GET", path, None, Answer, Access.PUBLIC))(answer)
    routes = api.routes()
    app = serving(routes) if sys.argv[1] == "serving" else Starlette(routes=routes)
    server = HttpServer(app, host="127.0.0.1", port=int(sys.argv[2]))
    await server.start()
    print("ready", flush=True)
    await asyncio.Event().wait()

uvloop.install()
asyncio.run(main())
"""
PATH = "/internal/things/42/commit"
SHAPES = ("starlette", "serving")


async def load(url: str, seconds: float, clients: int) -> int:
    done = 0
    deadline = time.monotonic() + seconds

    async def one(session: aiohttp.ClientSession) -> None:
        nonlocal done
        while time.monotonic() < deadline:
            async with session.get(url) as resp:
                assert resp.status == 200, resp.status
                await resp.read()
            done += 1

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(one(session) for _ in range(clients)))
    return done


async def measure(shape: str, seconds: float) -> tuple[float, float]:
    """(requests per second, server CPU µs per request) of one shape's server."""
    port = free_port()
    server = subprocess.Popen(  # noqa: ASYNC220 - started before any load, waited for below
        [sys.executable, "-c", SERVER, shape, str(port)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        assert server.stdout.readline().strip() == "ready"
        url = f"http://127.0.0.1:{port}{PATH}"
        await load(url, min(1.0, seconds), 8)  # warm-up: connections open, code paths hot
        process = psutil.Process(server.pid)
        before = sum(process.cpu_times()[:2])
        started = time.perf_counter()
        requests = await load(url, seconds, 8)
        elapsed = time.perf_counter() - started
        cpu = sum(process.cpu_times()[:2]) - before
        return requests / elapsed, cpu / requests * 1e6
    finally:
        server.terminate()
        server.wait(10)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0)
    add_smoke(parser)
    args = parser.parse_args()
    if args.smoke:
        args.rounds, args.seconds = 1, 0.5
    results: dict[str, list[tuple[float, float]]] = {shape: [] for shape in SHAPES}
    for _ in range(args.rounds):  # the shapes alternate, so the machine's drift falls on both
        for shape in SHAPES:
            results[shape].append(await measure(shape, args.seconds))
    rows = []
    for shape in SHAPES:
        rates, cpus = zip(*results[shape], strict=True)
        rows.append((shape, statistics.median(rates), statistics.median(cpus), f"{min(cpus):.1f}-{max(cpus):.1f}"))
    table(
        f"GET {PATH}, 8 clients, {args.rounds} rounds of {args.seconds} s per shape (median)",
        rows,
        ["shape", "requests/s", "server CPU µs/request", "rounds' range"],
    )
    print(f"\nserving / starlette: server CPU per request {rows[1][2] / rows[0][2]:.2f}x")


if __name__ == "__main__":
    asyncio.run(main())
