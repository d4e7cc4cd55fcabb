"""The gateway's instructions per request, counted by callgrind: a figure noise cannot move.

    python bench/gateway_instructions.py [--baseline TREE] [--requests 500] [--smoke]

Wall-clock and CPU-time figures on two shared cores move by 30% between runs (nginx
itself went from 11.9k to 19.3k req/s within an hour here). Instructions do not: this
runs the gateway's whole path in one process — meshop's lean server, the pipeline with
everything on (JWT verification of a real token, three GCRA limits, the access log,
spans into the NATS batcher with its publish stubbed, RED metrics) and the mesh client's
resilience chain on its HTTP pool — over real loopback sockets, between a keep-alive
client and a minimal asyncio backend, under `valgrind --tool=callgrind`. Each
configuration runs twice, with N and 5N requests; the difference divided by 4N is the
instructions per request, start-up and imports cancelled out. Only the requests are
instrumented (`--instr-atstart=no`, switched on by `callgrind_control` before the first):
instrumented, the start-up took ~80% of a run's time. The client and backend's share is
measured the same way (the client calling the backend directly) and subtracted.

Rows: (b) everything on, (c) without spans, (a) routing only, the floor (bench/floor_proxy.py:
a proxy with no feature, what Python and the event loop cost at the least), and with
`--baseline TREE` (a `git archive` of another commit's `src`) the same (b) from that tree.
Needs valgrind. `--smoke` counts (b) alone (and the client and backend's share) with few
requests: four runs instead of ten.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _common import add_smoke, table

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"

# Runs in the measured interpreter: MODE is full, nospans, plain, floor or direct.
WORKLOAD = r"""
import asyncio, inspect, io, os, socket, subprocess, sys
import uvloop
from meshop.gateway import config
from meshop.gateway.accesslog import AccessLog
from meshop.gateway.proxy import GatewayLimits, Proxy
from meshop.mesh.telemetry import tracing
from meshop.mesh.security.tokens import SigningKey, TokenIssuer, TokenVerifier
from meshop.mesh.client.client import ServiceClient
from meshop.mesh.transport.http_client import HttpPool
from meshop.mesh.telemetry.metrics import Metrics
from meshop.mesh.resilience.ratelimit import LocalLimiter
from meshop.mesh.registry.base import Instance
from meshop.mesh.transport.server import LeanServer

MODE, COUNT, BENCH = sys.argv[1], int(sys.argv[2]), sys.argv[3]
BODY = b'{"items":[{"id":"p1","sku":"SKU-001","name":"Product 1","price_cents":1001}],"next_cursor":null}'
ANSWER = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(BODY), BODY)
FULL = ('[limits]\nper_ip = "1000000/s"\nper_user = "1000000/s"\n[[routes]]\nprefix = "/api/catalog"\n'
        'service = "catalog"\nauth = "user"\nrate_limit = "1000000/s"\n')
PLAIN = '[limits]\nper_ip = "off"\nper_user = "off"\n[[routes]]\nprefix = "/api/catalog"\nservice = "catalog"\n'


class Backend(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        if data.endswith(b"\r\n\r\n"):
            self.transport.write(ANSWER)


class Registry:
    def __init__(self, port):
        self.found = [Instance(service="catalog", instance_id="b1", address="127.0.0.1", port=port, pid=1)]

    def instances(self, service):
        return self.found


class Nats:  # the span batcher's publish, stubbed: what NATS does with the bytes is not the gateway's cost
    async def publish(self, subject, payload):
        pass


async def main():
    loop = asyncio.get_running_loop()
    backend = await loop.create_server(Backend, "127.0.0.1", 0)
    port = backend.sockets[0].getsockname()[1]
    key = SigningKey.generate()
    token = TokenIssuer(key).issue("u1", ["customer"])

    async def jwks():
        return {"keys": [key.public_jwk()]}

    request = b"GET /products HTTP/1.1\r\nhost: backend\r\n\r\n"
    if MODE == "floor":
        sys.path.insert(0, BENCH)
        import floor_proxy

        floor = await floor_proxy.serve(0, ("127.0.0.1", port))
        port = floor.sockets[0].getsockname()[1]
    elif MODE != "direct":
        metrics = Metrics("gateway")
        # (a tree from before 2026-12-03 takes an aiohttp session second; unused here)
        try:
            old = "session" in inspect.signature(ServiceClient).parameters
        except ValueError:  # compiled (mypyc gives no signature): a tree from after that change
            old = False
        client = ServiceClient(Registry(port), *([None] if old else []), http=HttpPool())
        client.metrics = metrics
        if MODE == "full":
            spans = tracing.Tracing("gateway", "gw1")
            spans.publish_to(Nats())
            tracing.install(spans)
        proxy = Proxy(
            client,
            TokenVerifier(jwks),
            LocalLimiter(),
            config.parse(PLAIN if MODE == "plain" else FULL, source="bench"),
            GatewayLimits(max_body_bytes=1 << 20, max_header_bytes=16384, timeout_s=10.0),
            access_log=None if MODE == "plain" else AccessLog(service="gateway", instance="gw1", stream=io.BytesIO()),
            metrics=metrics,
        )
        sock = socket.socket()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        sock.setblocking(False)
        port = sock.getsockname()[1]
        # the lane, as the gateway serves the common request (trees from before 2026-12-03 have none)
        await LeanServer(proxy, **({"lane": proxy.lane} if hasattr(proxy, "lane") else {})).start(sock)
        head = b"GET /api/catalog/products HTTP/1.1\r\nhost: gateway\r\nauthorization: Bearer %s\r\n\r\n"
        request = head % token.encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    # Count from here on: what comes before is the same in every run (the runs' difference
    # would cancel it), and uninstrumented it takes a fifth of the time.
    subprocess.run(["callgrind_control", "--instr=on", str(os.getpid())], check=True, capture_output=True)
    for _ in range(COUNT):
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        # Not a regex, nor head.lower(): their cost grows with the head, and the gateway's head
        # is longer than the backend's (both send the name in lower case; find() skips ahead).
        at = head.find(b"content-length:")
        at = (at if at >= 0 else head.lower().index(b"content-length:")) + 15
        length = int(head[at : head.index(b"\r\n", at)])
        await reader.readexactly(length)


uvloop.run(main())
"""


def instructions(src: Path, mode: str, count: int, work: Path) -> int:
    script = work / "workload.py"
    script.write_text(WORKLOAD)
    out = work / f"callgrind.{src.parent.name}.{mode}.{count}"
    done = subprocess.run(
        [
            *("valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}"),
            *(sys.executable, str(script), mode, str(count), str(HERE)),
        ],
        env={**os.environ, "PYTHONPATH": str(src), "MESHOP_LOG_LEVEL": "warning"},
        capture_output=True,
        text=True,
        timeout=1800,
        check=True,
    )
    found = re.search(r"Collected : (\d+)", done.stderr)
    if found is None:
        raise RuntimeError(f"callgrind printed no total:\n{done.stderr[-2000:]}")
    return int(found.group(1))


def per_request(src: Path, mode: str, n: int, work: Path, pool: ThreadPoolExecutor) -> float:
    short, long = pool.submit(instructions, src, mode, n, work), pool.submit(instructions, src, mode, 5 * n, work)
    return (long.result() - short.result()) / (4 * n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=500, help="N: runs of N and 5N requests are compared")
    parser.add_argument("--baseline", type=Path, help="another source tree whose (b) is counted too")
    add_smoke(parser)
    opts = parser.parse_args()
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is needed: apt-get install -y valgrind")
    rows = [("(b) JWT+limits+tracing+log", SRC, "full")]
    if opts.smoke:
        opts.requests = 20
    else:
        rows.append(("(c) = (b) without spans", SRC, "nospans"))
        rows.append(("(a) routing only", SRC, "plain"))
        rows.append(("floor: minimal Python proxy (bench/floor_proxy.py)", SRC, "floor"))
    if opts.baseline is not None:
        rows.append((f"(b) at {opts.baseline.name}", opts.baseline.resolve() / "src", "full"))
    with tempfile.TemporaryDirectory(prefix="meshop-bench-instr-") as tmp, ThreadPoolExecutor(2) as pool:
        work = Path(tmp)
        client_and_backend = per_request(SRC, "direct", opts.requests, work, pool)
        counted = [
            (name, per_request(src, mode, opts.requests, work, pool) - client_and_backend) for name, src, mode in rows
        ]
    full = counted[0][1]
    table(
        "gateway instructions per request (callgrind; the client and backend's "
        f"{client_and_backend / 1000:.1f}k subtracted)",
        [(name, f"{n / 1000:.1f}k", f"{n / full:.2f}") for name, n in counted],
        ["path", "instructions", "x (b)"],
    )


if __name__ == "__main__":
    main()
