"""The least Python an HTTP/1.1 proxy can run per request: a measuring stick, not a proxy to use.

    python floor_proxy.py PORT UPSTREAM_URL

Two `asyncio.Protocol`s on uvloop, httptools parsing both ways, nothing else: each client
connection gets one upstream connection of its own, a request's head is forwarded as it
came (minus hop-by-hop headers) and the answer's status, headers and body are copied
back. No coroutine, task, future or timer per request; no routing, limits, auth, logs,
timeouts or errors handled; bodiless requests only. bench/gateway.py measures it in the
same run as nginx and the gateway, so the share of a proxied request that Python's
interpreter and the event loop cannot avoid is read off the same machine as the rest.
"""

from __future__ import annotations

import asyncio
import socket
import sys
from typing import cast
from urllib.parse import urlsplit

import httptools
import uvloop

_DROP_REQUEST = frozenset({b"host", b"connection", b"keep-alive", b"content-length", b"transfer-encoding"})
_DROP_RESPONSE = frozenset({b"connection", b"keep-alive", b"content-length", b"transfer-encoding"})


def _no_delay(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class Upstream(asyncio.Protocol):
    """The connection to the backend: each answer is written to the client as it completes."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.headers: list[bytes] = []
        self.body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        _no_delay(transport)
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.client.upstream_ready(self)

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.close()

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() not in _DROP_RESPONSE:
            self.headers.append(b"%s: %s\r\n" % (name, value))

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        body = b"".join(self.body)
        head = b"".join(self.headers)
        self.headers, self.body = [], []
        status = self.parser.get_status_code()
        self.client.write(b"HTTP/1.1 %d \r\n%scontent-length: %d\r\n\r\n%s" % (status, head, len(body), body))


class Client(asyncio.Protocol):
    """One client connection; its requests go, in order, over its own upstream connection."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.address = upstream
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.upstream: Upstream | None = None
        self.waiting: list[bytes] = []  # requests read before the upstream connection was made
        self.url = b""
        self.headers: list[bytes] = []
        self.connecting: asyncio.Task[tuple[asyncio.BaseTransport, Upstream]] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        _no_delay(transport)
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        loop = asyncio.get_running_loop()
        self.connecting = loop.create_task(loop.create_connection(lambda: Upstream(self), *self.address))

    def upstream_ready(self, upstream: Upstream) -> None:
        self.upstream = upstream
        for request in self.waiting:
            self._send(request)
        self.waiting.clear()

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.close()

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() not in _DROP_REQUEST:
            self.headers.append(b"%s: %s\r\n" % (name, value))

    def on_message_complete(self) -> None:
        host = b"%s:%d" % (self.address[0].encode(), self.address[1])
        method = self.parser.get_method()
        request = b"%s %s HTTP/1.1\r\nhost: %s\r\n%s\r\n" % (method, self.url, host, b"".join(self.headers))
        if self.upstream is None:
            self.waiting.append(request)
        else:
            self._send(request)

    def _send(self, request: bytes) -> None:
        assert self.upstream is not None
        assert self.upstream.transport is not None
        self.upstream.transport.write(request)

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def serve(port: int, upstream: tuple[str, int]) -> asyncio.Server:
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: Client(upstream), "127.0.0.1", port)


async def main() -> None:
    port, url = int(sys.argv[1]), urlsplit(sys.argv[2])
    assert url.hostname is not None
    assert url.port is not None
    server = await serve(port, (url.hostname, url.port))
    await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(main())
