"""A lean HTTP/1.1 client for calls between meshop processes: pooled keep-alive connections,
an `asyncio.Protocol` per connection and httptools (llhttp) to parse answers.

Why not aiohttp here: a call between services is small JSON over loopback or a LAN, and
aiohttp's general machinery (URL objects, multidict headers, streams, tracing hooks)
costs more CPU than the rest of the resilience chain together (docs/decisions/0008).
This client does only what those calls need: one request at a time per connection,
Content-Length or chunked answers, keep-alive, and errors that say whether the request
may have reached the server (`sent`), which is what retries are decided on.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import re
import socket
from collections.abc import Callable, Mapping
from typing import Final, Protocol, cast
from urllib.parse import quote

import httptools

from meshop.mesh.errors import TransportError
from meshop.mesh.registry.base import Instance
from meshop.mesh.transport.exchange import Answered, Exchange, Reply, Request

_SAFE_PATH = "/?=&%:@!$'()*+,;~-._[]"
#: How often a pool with requests in flight looks for expired ones: a timeout fires at most
#: this late (Finagle's timer ticks every 10 ms too), and no timer is armed per request.
TICK_S = 0.01
_UNSAFE = re.compile(r"[^A-Za-z0-9" + re.escape(_SAFE_PATH) + "]")


class HttpError(Exception):
    """The exchange failed; `sent` is False only when the request cannot have reached the server."""

    def __init__(self, message: str, *, sent: bool) -> None:
        super().__init__(message)
        self.sent = sent


class _Connection(asyncio.Protocol):
    def __init__(self, loop: asyncio.AbstractEventLoop, pool: HttpPool, key: tuple[str, int]) -> None:
        self.loop = loop
        #: Where the connection goes back when its answer is complete.
        self.pool = pool
        self.key = key
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        #: Who gets the answer to the request in flight (or its error), and when it times out
        #: (the loop's clock; the pool's tick expires it).
        self._done: Callable[[Reply | Exception], None] | None = None
        self.deadline = 0.0
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self.keep_alive = False
        self.closed = False
        self.idle_since = 0.0

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._settle(HttpError(f"malformed response: {exc}", sent=True))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._settle(HttpError(f"connection closed before the response ended ({exc or 'by peer'})", sent=True))

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        self._headers[key] = f"{self._headers[key]}, {text}" if key in self._headers else text

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        reply = Reply(self._parser.get_status_code(), self._headers, b"".join(self._body))
        self.keep_alive = self._parser.should_keep_alive()
        self._headers, self._body = {}, []
        self._settle(reply)

    def _settle(self, result: Reply | Exception) -> None:
        """The exchange is over: back to the pool (or closed), then `done` hears of it."""
        done, self._done = self._done, None
        if done is not None:
            self.pool._waiting.discard(self)
            if isinstance(result, Reply):
                self.pool._release(self.key, self, self.loop)
            else:  # failed or timed out: the answer may still come; drop it
                self.close()
            done(result)

    def send(self, data: bytes, deadline: float, done: Callable[[Reply | Exception], None]) -> None:
        """Send a request; `done` gets its answer, or the error (TimeoutError at `deadline`, the
        loop's clock, within `TICK_S`)."""
        assert self.transport is not None
        self.keep_alive = False
        self.transport.write(data)  # first: if it raises, nothing waits for an answer (none comes before we return)
        self._done = done
        self.deadline = deadline
        self.pool._wait(self)

    async def exchange(self, data: bytes, deadline: float) -> Reply:
        """`send`, for a coroutine: the answer, or the error raised.

        A connection can close between being made and being used: its server was killed as
        the kernel completed the handshake. Nothing was sent then (`HttpError(sent=False)`,
        so any request may go elsewhere); writing would raise uvloop's RuntimeError, or on
        asyncio's loop drop the request silently until its deadline.
        """
        if self.closed or self.transport is None or self.transport.is_closing():
            raise HttpError("the connection closed before the request was sent", sent=False)
        waiter: asyncio.Future[Reply] = self.loop.create_future()
        self.send(data, deadline, functools.partial(_resolve, waiter))
        return await waiter

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class Transport(Protocol):
    """What the mesh client makes its HTTP tries through: `HttpPool`, or a test's fake."""

    async def request(
        self,
        host: str,
        port: int,
        method: str,
        target: str,
        headers: Mapping[str, str],
        body: bytes | None,
        timeout_s: float,
    ) -> Reply: ...

    def send(
        self,
        host: str,
        port: int,
        method: str,
        target: str,
        headers: Mapping[str, str],
        body: bytes | None,
        timeout_s: float,
        done: Callable[[Reply | Exception], None],
    ) -> bool: ...

    async def close(self) -> None: ...


class HttpPool:
    """Keep-alive connections per (host, port), reused one request at a time."""

    def __init__(self, *, max_idle_per_host: int = 128, max_idle_s: float = 10.0) -> None:
        self._idle: dict[tuple[str, int], list[_Connection]] = {}
        self._max_idle = max_idle_per_host
        self._max_idle_s = max_idle_s
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        #: Connections with a request in flight, and the tick that expires them (armed
        #: while there are any): a timer per request cost ~7k instructions to arm and cancel.
        self._waiting: set[_Connection] = set()
        self._tick: asyncio.TimerHandle | None = None

    async def request(
        self,
        host: str,
        port: int,
        method: str,
        target: str,
        headers: Mapping[str, str],
        body: bytes | None,
        timeout_s: float,
    ) -> Reply:
        """Send one request; `HttpError(sent=False)` if it cannot have reached the server."""
        head = _request_head(host, port, method, target, headers, body)
        key = (host, port)
        loop = self._loop
        if loop is None or loop.is_closed():
            loop = self._loop = asyncio.get_running_loop()
            self._waiting.clear()  # the old loop's: its connections and tick are gone with it
            self._tick = None
        now = loop.time()
        deadline = now + timeout_s
        conn = self._take_idle(key, now)
        if conn is None:
            conn = await self._connect(loop, key, deadline)
        try:
            return await conn.exchange(head + body if body else head, deadline)
        except BaseException:  # cancelled (a failure has closed it already): the answer may still come
            conn.close()
            raise

    def send(
        self,
        host: str,
        port: int,
        method: str,
        target: str,
        headers: Mapping[str, str],
        body: bytes | None,
        timeout_s: float,
        done: Callable[[Reply | Exception], None],
    ) -> bool:
        """`request` without a coroutine, on an idle connection: `done` gets the reply or the error.

        False, and nothing sent, when no connection to `host:port` is idle (or none was
        ever made on this loop): `request` connects. Errors are `request`'s: `HttpError`
        (`sent` True: the request went out) or `TimeoutError`.
        """
        loop = self._loop
        if loop is None or loop.is_closed():
            return False
        head = _request_head(host, port, method, target, headers, body)
        key = (host, port)
        now = loop.time()
        conn = self._take_idle(key, now)
        if conn is None:
            return False
        try:
            conn.send(head + body if body else head, now + timeout_s, done)
        except BaseException:  # taken from the pool and not sent: neither idle nor waiting, so closed
            conn.close()
            raise
        return True

    def _wait(self, conn: _Connection) -> None:
        """`conn` sent a request: expire it at its deadline."""
        self._waiting.add(conn)
        if self._tick is None:
            self._tick = conn.loop.call_later(TICK_S, self._expire, conn.loop)

    def _expire(self, loop: asyncio.AbstractEventLoop) -> None:
        """The tick: time out what is past its deadline; tick again while anything waits."""
        now = loop.time()
        for conn in [c for c in self._waiting if c.deadline <= now]:
            conn._settle(TimeoutError())
        self._tick = loop.call_later(TICK_S, self._expire, loop) if self._waiting else None

    def _release(self, key: tuple[str, int], conn: _Connection, loop: asyncio.AbstractEventLoop) -> None:
        """Back to the idle connections after an answer, if it can be reused."""
        if conn.keep_alive and not conn.closed and not self._closed:
            pool = self._idle.get(key)
            if pool is None:
                pool = self._idle[key] = []
            if len(pool) < self._max_idle:
                conn.idle_since = loop.time()
                pool.append(conn)
                return
        conn.close()

    async def _connect(self, loop: asyncio.AbstractEventLoop, key: tuple[str, int], deadline: float) -> _Connection:
        host, port = key
        try:
            async with asyncio.timeout_at(deadline):
                # Made in an empty context: a protocol's callbacks run in the context its
                # connection was made in, and a pooled connection serves later calls, whose
                # callbacks (and log lines) must not see the trace of the call that made it.
                making = loop.create_connection(lambda: _Connection(loop, self, key), host, port)
                _, conn = await loop.create_task(making, context=contextvars.Context())
        except OSError as exc:
            raise HttpError(f"cannot connect to {host}:{port}: {exc}", sent=False) from exc
        return conn

    def _take_idle(self, key: tuple[str, int], now: float) -> _Connection | None:
        """The most recently used idle connection that is still fresh.

        Servers close idle keep-alive connections (the lean server after `keep_alive_s`); reusing one as the
        server closes it loses the request, so connections idle for `max_idle_s` are dropped.
        """
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            fresh = now - conn.idle_since < self._max_idle_s
            if fresh and not conn.closed and conn.transport is not None and not conn.transport.is_closing():
                return conn
            conn.close()
        return None

    async def close(self) -> None:
        self._closed = True
        for pool in self._idle.values():
            for conn in pool:
                conn.close()
        self._idle.clear()


def _request_head(
    host: str, port: int, method: str, target: str, headers: Mapping[str, str], body: bytes | None
) -> bytes:
    # Typed as a dict, compiled code walks it natively (a Mapping is walked through methods).
    fields: dict[str, str] = headers if isinstance(headers, dict) else dict(headers)
    if _UNSAFE.search(target) is not None:  # most targets need no quoting: skip quote()'s work
        target = quote(target, safe=_SAFE_PATH)
    # One join of the pieces: an f-string per header line would build each line, then copy
    # it. Appends are native when compiled; `+=` of a tuple would build the tuple, then copy it.
    parts = [method, " ", target, " HTTP/1.1\r\nhost: ", host, ":", str(port), "\r\n"]
    for name, value in fields.items():
        # A line break in a name or value would inject a header (or a request). `in` on a
        # str is a memchr; `count` walks every character (a token's value is ~700 of them).
        if "\n" in value or "\r" in value or "\n" in name or "\r" in name:
            raise ValueError("a header contains a line break")
        if ":" in name:
            raise ValueError("a header name contains a colon")
        parts.append(name)
        parts.append(": ")
        parts.append(value)
        parts.append("\r\n")
    if body:
        parts += ("content-length: ", str(len(body)), "\r\n")
    elif method in ("POST", "PUT", "PATCH"):
        parts.append("content-length: 0\r\n")
    parts.append("\r\n")
    return "".join(parts).encode("latin-1")


def _resolve(waiter: asyncio.Future[Reply], result: Reply | Exception) -> None:
    if not waiter.done():
        if isinstance(result, Reply):
            waiter.set_result(result)
        else:
            waiter.set_exception(result)


class HttpExchange(Exchange):
    """The mesh client's `Exchange` over HTTP/1.1: `pool` (an `HttpPool`, or a test's
    `Transport`) carries each try on a keep-alive connection to the instance."""

    __slots__ = ("pool",)

    def __init__(self, pool: Transport) -> None:
        self.pool: Final = pool

    async def exchange(self, instance: Instance, request: Request, headers: dict[str, str], timeout_s: float) -> Reply:
        try:
            return await self.pool.request(
                instance.address, instance.port, request.method, request.path, headers, request.body, timeout_s
            )
        except (TimeoutError, HttpError) as exc:
            raise self.failure(instance, exc, timeout_s) from exc

    def send(
        self, instance: Instance, request: Request, headers: dict[str, str], timeout_s: float, done: Answered
    ) -> bool:
        return self.pool.send(
            instance.address, instance.port, request.method, request.path, headers, request.body, timeout_s, done
        )

    def failure(self, instance: Instance, exc: Exception, timeout_s: float) -> TransportError:
        if isinstance(exc, TimeoutError):
            return TransportError(
                f"{instance.service} at {instance.url} did not answer within {timeout_s:.3f}s", sent=True
            )
        return TransportError(f"{instance.service} at {instance.url}: {exc}", sent=getattr(exc, "sent", True))

    async def close(self) -> None:
        await self.pool.close()
