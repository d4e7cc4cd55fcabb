"""The naive aiohttp proxy that issue 5 calibrates its targets against.

    python naive_proxy.py PORT UPSTREAM_URL

The issue's anchor: "a naive aiohttp proxy costs about 300 µs of CPU per request and
reaches 0.25-0.30 of nginx's throughput when sharing a core with the backend". This is
that proxy as anyone would first write it: an aiohttp server whose one catch-all
handler forwards the request through one pooled `aiohttp.ClientSession` and copies the
answer back. It runs on uvloop, like meshop's gateway, so the comparison is about the
proxy's code, not the event loop. bench/gateway.py measures it in the same run as
nginx and the meshop gateway, so the issue's ratios can be checked against it on
whatever machine the benchmark runs on.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator

import aiohttp
import uvloop
from aiohttp import web

# Hop-by-hop headers (RFC 9110 §7.6.1) and what the client session sets itself.
_DROP = frozenset({"connection", "keep-alive", "transfer-encoding", "upgrade", "host", "content-length"})


def main() -> None:
    port, upstream = int(sys.argv[1]), sys.argv[2].rstrip("/")

    async def session_ctx(app: web.Application) -> AsyncIterator[None]:
        app["session"] = aiohttp.ClientSession()
        yield
        await app["session"].close()

    async def forward(request: web.Request) -> web.Response:
        session: aiohttp.ClientSession = request.app["session"]
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _DROP}
        body = await request.read()
        async with session.request(
            request.method, upstream + request.path_qs, headers=headers, data=body or None
        ) as answer:
            payload = await answer.read()
            return web.Response(
                status=answer.status, body=payload, content_type=answer.content_type, charset=answer.charset
            )

    app = web.Application()
    app.cleanup_ctx.append(session_ctx)
    app.router.add_route("*", "/{tail:.*}", forward)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None, loop=uvloop.new_event_loop())


if __name__ == "__main__":
    main()
