"""Seed 001's latency table, measured: a call across a link of 0, 1, 8 and 45 ms round trip.

Two lab hosts (network namespaces, meshop.lab.hosts): the server host runs a nats-server,
and one process serving the same operation over the mesh's HTTP server and over NATS,
a raw NATS responder and a TCP echo; the client host calls it through a delay relay
(meshop.lab.relay) in the lab's own namespace, which holds each request for the link's
round trip (netem is not in this kernel). Over the same link, interleaved in rounds:

- a TCP echo (64 bytes): the link itself, relay included;
- a raw aiohttp GET and a raw nats-py request: the baselines;
- `ServiceClient.call` over HTTP and over NATS: the whole chain (balancer, breaker,
  bulkhead, retry budget, deadline, tracing headers, typed decoding).

Security is on, as the shop runs it (issue 24): the mesh calls an INTERNAL operation with
the caller's service identity (decision 0020: a signed certificate and call token in
`meshop-identity`, ~390 bytes), which the server checks on every call (cached by the
header's string) against its trust bundle and the operation's callers. `--no-identity`
calls a PUBLIC operation with none (the figures of README runs before decision 0040).

Target (issue 24): the mesh call's p50 ≤ the raw request's p50 + 0.15 ms at every distance.
The relay's own cost is the 0 ms row's TCP echo. Seed 001's Hyperlane row is printed
beside it for reference (its test and hardware are not known).

Needs root (network namespaces); `--smoke` runs two distances briefly.

    sudo .venv/bin/python bench/latency_table.py [--rounds 5] [--smoke] [--no-identity]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import msgspec

from _common import add_smoke, pct, table
from meshop.lab.hosts import Hosts, can_create
from meshop.mesh.api.operation import Access, Operation
from meshop.mesh.security.identity import CredentialFiles, provision
from meshop.runtime.nats_server import find_binary

#: Round trips to inject and seed 001's column names and Hyperlane figures for them.
DISTANCES: list[tuple[float, str, float]] = [
    (0.0, "local call", 0.1),
    (1.0, "same datacenter", 1.2),
    (8.0, "cross datacenter", 8.5),
    (45.0, "cross region", 45.2),
]
TARGET_MS = 0.15
HTTP_PORT, ECHO_PORT, NATS_PORT = 7080, 7081, 7082
PATHS = ["TCP echo", "raw aiohttp", "mesh call, HTTP", "raw nats-py", "mesh call, NATS"]


class Item(msgspec.Struct):
    id: str
    name: str


GET_ITEM: Operation[None, Item] = Operation("bench", "get", "GET", "/item", None, Item, Access.PUBLIC, idempotent=True)
#: The same answer, for a caller that proves its identity (service `caller`).
GET_INTERNAL: Operation[None, Item] = Operation(
    "bench", "internal", "GET", "/internal/item", None, Item, Access.INTERNAL, idempotent=True, callers=("caller",)
)


# --- the server host -------------------------------------------------------------------


async def serve(nats_url: str, identity_dir: Path) -> None:
    import nats

    from meshop.mesh.api.routing import Api, serving
    from meshop.mesh.transport.nats import serve as serve_nats
    from meshop.mesh.transport.server import HttpServer

    api = Api("bench")
    api.callers = CredentialFiles(identity_dir, "bench").verifier

    @api.implement(GET_ITEM)
    async def item(_ctx: object, _body: None) -> Item:
        return Item(id="1", name="thing")

    @api.implement(GET_INTERNAL)
    async def internal(_ctx: object, _body: None) -> Item:
        return Item(id="1", name="thing")

    server = HttpServer(serving(api.routes()), host="0.0.0.0", port=HTTP_PORT)
    await server.start()

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
        writer.close()

    await asyncio.start_server(echo, "0.0.0.0", ECHO_PORT)
    nc = await nats.connect(nats_url)
    await serve_nats(nc, api, "a")

    async def raw(msg: nats.aio.msg.Msg) -> None:
        await msg.respond(b'{"id":"1","name":"thing"}')

    await nc.subscribe("bench.raw", cb=raw)
    print("peer ready", flush=True)
    await asyncio.Event().wait()


# --- the client host -------------------------------------------------------------------


async def measure(address: str, rounds: int, per_round: int, identity_dir: Path | None) -> dict[str, list[float]]:
    """Every path `rounds` x `per_round` times through the relay at `address`, interleaved.

    With `identity_dir`, the mesh calls the INTERNAL operation as service `caller`."""
    import aiohttp
    import nats

    from meshop.mesh.client.client import ServiceClient
    from meshop.mesh.registry import Instance, StaticRegistry

    nc = await nats.connect(f"nats://{address}:{NATS_PORT}")
    registry = StaticRegistry([Instance(service="bench", instance_id="a", address=address, port=HTTP_PORT, pid=0)])
    client = ServiceClient(registry, nc=nc)
    op = GET_ITEM
    if identity_dir is not None:
        client.identity = CredentialFiles(identity_dir, "caller").minter
        op = GET_INTERNAL
    reader, writer = await asyncio.open_connection(address, ECHO_PORT)
    payload = b"x" * 64
    url = f"http://{address}:{HTTP_PORT}/item"
    async with aiohttp.ClientSession() as session:

        async def tcp_echo() -> None:
            writer.write(payload)
            await reader.readexactly(len(payload))

        async def raw_http() -> None:
            async with session.get(url) as resp:
                msgspec.json.decode(await resp.read(), type=Item)

        async def mesh_http() -> None:
            await client.call(op)

        async def raw_nats() -> None:
            msgspec.json.decode((await nc.request("bench.raw", b"", timeout=5)).data, type=Item)

        async def mesh_nats() -> None:
            await client.call(op, transport="nats")

        paths: dict[str, Callable[[], Awaitable[None]]] = dict(
            zip(PATHS, [tcp_echo, raw_http, mesh_http, raw_nats, mesh_nats], strict=True)
        )
        samples: dict[str, list[float]] = {name: [] for name in paths}
        for fn in paths.values():  # warm: connections open, code paths taken
            for _ in range(5):
                await fn()
        for _ in range(rounds):
            for name, fn in paths.items():
                for _ in range(per_round):
                    start = time.perf_counter()
                    await fn()
                    samples[name].append(time.perf_counter() - start)
    writer.close()
    await client.close()
    await nc.close()
    return samples


# --- the driver ------------------------------------------------------------------------


@contextlib.contextmanager
def started(args: list[str], ready: str, *, timeout_s: float = 15.0) -> Iterator[subprocess.Popen[str]]:
    """A process that prints `ready` on stdout when it is; stopped (and reaped) at exit."""
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + timeout_s
        assert proc.stdout is not None
        while ready not in (line := proc.stdout.readline()):
            if (not line and proc.poll() is not None) or time.monotonic() > deadline:
                raise RuntimeError(f"{args[-3:]} did not become ready (exit {proc.poll()})")
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run(
    rounds: int, distances: list[tuple[float, str, float]], per_round_at: Callable[[float], int], *, identity: bool
) -> None:
    if not can_create():
        sys.exit("bench/latency_table.py needs root: it makes two lab hosts (network namespaces)")
    here = str(Path(__file__).resolve())
    python = sys.executable
    results: dict[float, dict[str, list[float]]] = {}
    with Hosts.create(2) as lab, tempfile.TemporaryDirectory() as tmp:
        client_host, server_host = lab.hosts
        identity_dir = Path(tmp) / "identity"
        provision(identity_dir, ["bench", "caller"])
        nats_bin = str(find_binary())
        broker = subprocess.Popen(
            [*server_host.exec_prefix, nats_bin, "-a", "0.0.0.0", "-p", str(NATS_PORT), "-sd", tmp],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            with started(
                [*server_host.exec_prefix, python, here, "--serve", f"nats://127.0.0.1:{NATS_PORT}", str(identity_dir)],
                "peer ready",
            ):
                for delay_ms, _, _ in distances:
                    routes = [
                        f"--route={lab.gateway}:{port}={server_host.address}:{port}"
                        for port in (HTTP_PORT, ECHO_PORT, NATS_PORT)
                    ]
                    relay = [python, "-m", "meshop.lab.relay", *routes, f"--delay-ms={delay_ms}"]
                    with started(relay, "relay ready"):
                        out = subprocess.run(
                            [*client_host.exec_prefix, python, here, "--measure", lab.gateway,
                             str(rounds), str(per_round_at(delay_ms)), str(identity_dir) if identity else "-"],
                            stdout=subprocess.PIPE, text=True, check=True, timeout=600,
                        )  # fmt: skip
                    results[delay_ms] = json.loads(out.stdout.strip().splitlines()[-1])
        finally:
            broker.terminate()
            broker.wait()
    report(results, distances, identity=identity)


def report(
    results: dict[float, dict[str, list[float]]], distances: list[tuple[float, str, float]], *, identity: bool
) -> None:
    rows = []
    verdicts = []
    for delay_ms, column, hyperlane in distances:
        s = results[delay_ms]
        p50 = {name: pct(values, 0.5) * 1000 for name, values in s.items()}
        row: list[object] = [f"{delay_ms:g} ms ({column})", len(s["TCP echo"])]
        for name in PATHS:
            row.append(f"{p50[name]:.3f} / {pct(s[name], 0.99) * 1000:.3f}")
        row.append(f"{hyperlane:g}")
        rows.append(tuple(row))
        for mesh, raw in (("mesh call, HTTP", "raw aiohttp"), ("mesh call, NATS", "raw nats-py")):
            extra = p50[mesh] - p50[raw]
            verdicts.append((f"{delay_ms:g} ms", mesh, f"{extra:+.3f}", "yes" if extra <= TARGET_MS else "NO"))
    table(
        f"seed 001's inter-service call latency, measured over one lab link (ms, p50 / p99; "
        f"service identity {'on' if identity else 'off'}; pid {os.getpid()})",
        rows,
        ["round trip injected", "calls/path", *PATHS, "seed 001 Hyperlane"],
    )
    table(
        f"target: the mesh call's p50 <= the raw request's p50 + {TARGET_MS} ms",
        verdicts,
        ["distance", "path", "p50 vs raw (ms)", f"<= +{TARGET_MS} ms"],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--no-identity", action="store_true", help="call a PUBLIC operation, with no service identity (security off)"
    )
    parser.add_argument("--serve", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--measure", nargs=4, help=argparse.SUPPRESS)
    add_smoke(parser)
    opts = parser.parse_args()
    if opts.serve:
        import uvloop

        uvloop.install()
        asyncio.run(serve(opts.serve[0], Path(opts.serve[1])))
    elif opts.measure:
        import uvloop

        uvloop.install()
        address, rounds, per_round, identity_dir = opts.measure
        identified = None if identity_dir == "-" else Path(identity_dir)
        samples = asyncio.run(measure(address, int(rounds), int(per_round), identified))
        print(json.dumps(samples))
    elif opts.smoke:
        run(1, DISTANCES[:2], lambda _delay: 10, identity=not opts.no_identity)
    else:
        # 600 calls per path and distance, fewer (about 12 s of them) where each is long:
        # at 45 ms, a p50 of 50 calls moved by ±0.2 ms from run to run.
        run(
            opts.rounds,
            DISTANCES,
            lambda delay_ms: max(40, min(600, int(12_000 / (delay_ms + 1))) // opts.rounds),
            identity=not opts.no_identity,
        )


if __name__ == "__main__":
    main()
