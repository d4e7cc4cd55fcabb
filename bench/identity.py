"""What proving a service's identity costs per call: signed tokens vs TLS on the connection.

Tokens (what meshop uses, docs/decisions/0020): CPU per call at the caller (the identity
header, minted once per callee and reused) and at the callee (a verified header looked up
by its string), and the uncached costs behind them (one mint, one full chain check).
TLS (the mTLS alternative): CPU per request/response on a kept-alive loopback connection
through asyncio's SSL transport (uvloop when installed), against the same exchange in
plain TCP; both ends run in this process, so the difference is the caller's and the
callee's cost together. The handshake (a new connection) is timed apart; mutual TLS adds a
client certificate's signature and check to it.

    python bench/identity.py            # ~20 s
    python bench/identity.py --smoke    # a few hundred iterations, to check it runs
"""

from __future__ import annotations

import argparse
import asyncio
import ssl
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from starlette.requests import Request

from _common import table
from meshop.contracts.payments import AUTHORIZE
from meshop.mesh.api.routing import Api
from meshop.mesh.headers import IDENTITY_HEADER
from meshop.mesh.security.identity import CallerVerifier, Issuer, TokenMinter, TrustBundle
from meshop.runtime.certs import create_dev_certificates

PAYLOAD = b"x" * 300  # a small JSON request or answer


def cpu_us(fn: Callable[[], object], n: int) -> float:
    """CPU µs per call of `fn`, best of three rounds (the least disturbed)."""
    best = float("inf")
    for _ in range(3):
        started = time.process_time()
        for _ in range(n):
            fn()
        best = min(best, (time.process_time() - started) / n * 1e6)
    return best


def tokens(n: int) -> list[tuple[str, float]]:
    root = Issuer.generate()
    minter = TokenMinter(root.issue("orders"))
    verifier = CallerVerifier("payments", TrustBundle({root.kid: root.key.public_key()}))
    header = minter.header("payments")
    verifier.caller(header)
    now = time.time()
    api = Api("payments")
    api.callers = verifier
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/internal/payments",
        "headers": [(b"content-type", b"application/json"), (IDENTITY_HEADER.encode(), header.encode())],
    }
    base = cpu_us(lambda: Request(scope).headers, n * 20)
    check = cpu_us(lambda: api._check_caller(AUTHORIZE, Request(scope).headers), n * 20)
    return [
        ("callee: the route layer's check (header, verify, allow-list)", check - base),
        ("caller: identity header (cached per callee)", cpu_us(lambda: minter.header("payments"), n * 20)),
        ("callee: verified header (cached by string)", cpu_us(lambda: verifier.caller(header), n * 20)),
        ("caller: mint a token (every ~150 s per callee)", cpu_us(lambda: minter._mint("payments", now), n)),
        ("callee: a new token of a checked certificate", cpu_us(lambda: verifier._verify(header, now), n)),
        ("header size (bytes)", float(len(header))),
    ]


async def _exchanges(tls: bool, n: int, directory: Path) -> tuple[float, float]:
    """(CPU µs per request/response on one connection, CPU µs per new connection)."""
    server_ctx = client_ctx = None
    if tls:
        paths = create_dev_certificates(directory)
        server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_ctx.load_cert_chain(paths["cert"], paths["key"])
        client_ctx = ssl.create_default_context(cafile=str(paths["ca"]))

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.readexactly(len(PAYLOAD)):
                writer.write(data)
        except asyncio.IncompleteReadError:
            writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx)
    for _ in range(100):  # warm up
        writer.write(PAYLOAD)
        await reader.readexactly(len(PAYLOAD))
    started = time.process_time()
    for _ in range(n):
        writer.write(PAYLOAD)
        await reader.readexactly(len(PAYLOAD))
    per_exchange = (time.process_time() - started) / n * 1e6
    writer.close()
    connections = max(10, n // 50)
    started = time.process_time()
    for _ in range(connections):
        r, w = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx)
        w.write(PAYLOAD)
        await r.readexactly(len(PAYLOAD))
        w.close()
        await w.wait_closed()
    per_connection = (time.process_time() - started) / connections * 1e6
    server.close()
    await server.wait_closed()
    return per_exchange, per_connection


def transport(n: int) -> list[tuple[str, float]]:
    try:
        import uvloop

        runner: Callable[..., tuple[float, float]] = uvloop.run
    except ImportError:
        runner = asyncio.run
    with tempfile.TemporaryDirectory() as tmp:
        plain = runner(_exchanges(False, n, Path(tmp)))
        tls = runner(_exchanges(True, n, Path(tmp)))
    return [
        ("plain TCP: request/response, both ends", plain[0]),
        ("TLS: request/response, both ends", tls[0]),
        ("TLS cost per call, caller + callee", tls[0] - plain[0]),
        ("plain TCP: new connection", plain[1]),
        ("TLS: new connection (server auth only)", tls[1]),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="a few hundred iterations: does it run")
    args = parser.parse_args()
    n = 200 if args.smoke else 5000
    table("service tokens (CPU µs per operation)", tokens(n), ("what", "µs"))
    table("TLS on the connection (CPU µs)", transport(n), ("what", "µs"))


if __name__ == "__main__":
    main()
