"""The HTTP server embedded in a meshop process's own event loop.

`HttpServer` binds its own socket (so port 0 gives a free port whose number is known
before registering) and serves one ASGI app on it with `LeanServer`: an `asyncio.Protocol`
on httptools that writes each answer in one piece and keeps nothing per request it does
not need (docs/decisions/0010-lean-gateway-server.md). Every process is served by it, the
gateway and the services alike, so that one parser decides how every request is framed:
a request whose framing two parsers could read differently is refused, never served
(docs/decisions/0018-one-strict-http-server.md). An app wrapped in `Lean` (the gateway)
may also offer a lane, taking requests without a task per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from pathlib import Path
from typing import Any, Final, cast
from urllib.parse import unquote

import httptools
import msgspec
import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from meshop.mesh.errors import (
    PROBLEM_CONTENT_TYPE,
    BadRequest,
    HeadersTooLarge,
    InternalError,
    ProblemError,
    StateError,
)
from meshop.mesh.headers import ANSWER_EXTENSION

__all__ = ["ANSWER_EXTENSION", "HttpServer", "Lane", "Lean", "LeanServer", "Lingering"]


#: Offered each request's scope and its `answer` before a task is made for the app: True
#: when it took the request (and calls `answer` once, now or from a later callback), False
#: to leave it to the app. `LeanServer`'s way to serve without a task per request.
Lane = Callable[[dict[str, Any], Callable[[int, bytes, bytes], None]], bool]

log = structlog.get_logger("meshop.server")


class Lean:
    """An ASGI app with a lane: `LeanServer` offers it each request before making a task for it."""

    __slots__ = ("app", "lane")

    def __init__(self, app: ASGIApp, *, lane: Lane | None = None) -> None:
        self.app = app
        self.lane = lane

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


class HttpServer:
    """Serves one ASGI app on one socket until stopped; stop drains in-flight requests."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        host: str,
        port: int,
        drain_timeout_s: float = 8.0,
        tls: tuple[Path, Path] | None = None,
        reuse_port: bool = False,
    ) -> None:
        """`reuse_port`: share the port with other processes that bind it so too (SO_REUSEPORT)."""
        self._tls = tls
        self._reuse_port = reuse_port
        self._app = app
        self._host = host
        self._port = port
        self._drain_timeout_s = drain_timeout_s
        self._lean: LeanServer | None = None
        self.port = 0

    async def start(self) -> int:
        """Bind and serve; returns this process's own port.

        With `reuse_port`, the configured port is shared with the other processes that bind
        it so, and a second listener on a port of this process's own is returned instead:
        the address that names this instance (health checks, `/metrics`, the console),
        where the shared one reaches whichever replica the kernel picks.
        """
        if self._lean is not None:
            raise StateError("server already started")
        socks = [self._listen(self._port, reuse_port=self._reuse_port)]
        if self._reuse_port:
            try:
                socks.append(self._listen(0))
            except OSError:
                socks[0].close()
                raise
        self.port = socks[-1].getsockname()[1]
        context = None
        if self._tls is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(str(self._tls[0]), str(self._tls[1]))
        app, lane = (self._app.app, self._app.lane) if isinstance(self._app, Lean) else (self._app, None)
        self._lean = LeanServer(app, tls=context is not None, lane=lane)
        await self._lean.start(*socks, ssl=context)
        return self.port

    def _listen(self, port: int, *, reuse_port: bool = False) -> socket.socket:
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:  # every replica's listener joins one group; the kernel spreads connections
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        # Accepted connections inherit it: an answer streamed in parts must not wait for
        # the peer's delayed ACK (40 ms) before its next part leaves.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            sock.bind((self._host, port))
            sock.listen(2048)
        except OSError:
            sock.close()
            raise
        sock.setblocking(False)
        return sock

    async def stop(self) -> None:
        """Stop accepting, finish in-flight requests (bounded by the drain timeout), close."""
        if self._lean is not None:
            lean, self._lean = self._lean, None
            await lean.stop(self._drain_timeout_s)


_ASGI = {"version": "3.0", "spec_version": "2.3"}
_STATUS_LINES = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode() for s in HTTPStatus}
#: Above the gateway's largest `max_header_bytes` (1 MiB), which answers 431 itself.
_MAX_HEAD_BYTES = 1_114_112
_BODY_HIGH_WATER = 256 * 1024
_MAX_QUEUED = 16  # pipelined requests read ahead of the one being answered
# Module-level Finals are C statics when compiled; `time.x()` looks `x` up on the module per call (~270 instructions).
_time: Final = time.time


_encode = msgspec.json.Encoder().encode


def _problem(error: ProblemError, instance: str | None = None) -> bytes:
    """A whole RFC 9457 answer, closing the connection: the server's own refusals."""
    body = _encode(error.to_problem(instance=instance))
    return b"%scontent-type: %s\r\ncontent-length: %d\r\nconnection: close\r\n\r\n%s" % (
        _STATUS_LINES[error.status],
        PROBLEM_CONTENT_TYPE.encode(),
        len(body),
        body,
    )


#: The header fields `on_header` looks at (frozenset: a C-level lookup when compiled).
_NOTED: Final = frozenset((b"content-length", b"transfer-encoding", b"host", b"expect", b"connection"))
# Constant: a head refused unread has no trustworthy path to name as the instance.
_MALFORMED = _problem(BadRequest("malformed HTTP request"))
_HEAD_TOO_LARGE = _problem(HeadersTooLarge("request head (request line and header fields) too large"))
#: Every leniency llhttp has, off: they are off by default, and this says it stays so.
_STRICT = dict.fromkeys(
    (
        "lenient_headers",
        "lenient_chunked_length",
        "lenient_keep_alive",
        "lenient_transfer_encoding",
        "lenient_version",
        "lenient_data_after_close",
        "lenient_optional_lf_after_cr",
        "lenient_optional_cr_before_lf",
        "lenient_optional_crlf_after_chunk",
        "lenient_spaces_after_chunk_size",
    ),
    False,
)


@dataclass(frozen=True, slots=True)
class Lingering:
    """How long, and how much, a connection is still read after an answer it closes on.

    Closing a socket with input unread makes the kernel send a reset, and a reset destroys
    what the client has received but not read yet: the answer. A client that writes its
    whole body before it reads (urllib, most SDKs) would get "connection reset" instead of
    a 413 or a 401. So, as nginx's lingering close does, the answer is written, then EOF,
    and what still comes is read and dropped until the client closes, goes quiet for
    `idle_s`, `time_s` have passed, or `max_bytes` were dropped (nginx bounds time only:
    lingering_time 30 s, lingering_timeout 5 s). An early answer keeps the connection
    instead when what is left of its body is known and at most `keep_alive_bytes`: that
    much is read through the parser and dropped, and the next request is served.
    """

    #: nginx's lingering_time: a client at 1 MB/s gets the answer to a 20 MB upload.
    time_s: float = 30.0
    #: nginx's lingering_timeout: a client still writing its body does not pause for this long.
    idle_s: float = 5.0
    #: 64x the gateway's body limit, more than a mistaken upload usually is; dropping it
    #: costs the server 10-30 ms of CPU (measured on loopback): a refusal is worth no more.
    max_bytes: int = 64 * 1024 * 1024
    #: The gateway's body limit (MESHOP_MAX_BODY_BYTES): any body it would take is also
    #: worth dropping to keep the connection; one it refuses (413) is not.
    keep_alive_bytes: int = 1024 * 1024


class _HeadTooLarge(Exception):
    """Raised from a parser callback to stop parsing a head over the limit."""


class _BadFraming(Exception):
    """Raised from a parser callback to stop parsing a head whose framing is refused."""


class LeanServer:
    """HTTP/1.1 for one ASGI app, on one socket, in the running loop.

    Keep-alive (idle connections closed after `keep_alive_s`), pipelined requests answered
    in order, request bodies streamed with backpressure, `Expect: 100-continue`, chunked
    answers when the app streams without a length, TLS, and a bounded drain on stop. An
    answer given as one body message (the gateway's) leaves in one write. Not served:
    WebSocket and HTTP/2 (a request asking to upgrade is answered as plain HTTP/1.1).

    Framing is stricter than RFC 9112 requires, since a request that two parsers could
    frame differently is how one smuggles a second request past the first: besides what
    llhttp refuses with every leniency off (Content-Length with Transfer-Encoding, two
    Content-Lengths or a list of them, one not all digits, an invalid chunk size, obs-fold,
    a bare LF or CR, whitespace before a colon), a Transfer-Encoding other than exactly
    `chunked`, one in an HTTP/1.0 request, and two Host fields are refused: 400, the
    connection closed, nothing given to the app. Trailer fields are dropped, never merged
    into the headers. An answer that closes the connection with input unread lingers
    (`Lingering`).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        tls: bool = False,
        keep_alive_s: float = 30.0,
        max_head_bytes: int = _MAX_HEAD_BYTES,
        lane: Lane | None = None,
        lingering: Lingering = Lingering(),
    ) -> None:
        self.app = app
        self.lane = lane
        self.lingering = lingering
        self.scheme = "https" if tls else "http"
        self.keep_alive_s = keep_alive_s
        self.max_head_bytes = max_head_bytes
        self.draining = False
        self.connections: set[_Connection] = set()
        self._emptied = asyncio.Event()  # set when the last connection closes while draining
        self._date_at = 0
        self._date_line = b""
        self._servers: list[asyncio.AbstractServer] = []
        self._sweeper: asyncio.Task[None] | None = None

    def emptied(self) -> None:
        self._emptied.set()

    def date_line(self) -> bytes:
        """The `date` header line (RFC 9110 §6.6.1), formatted once a second."""
        now = int(_time())
        if now != self._date_at:
            self._date_at = now
            self._date_line = b"date: %s\r\n" % formatdate(now, usegmt=True).encode()
        return self._date_line

    async def start(self, *socks: socket.socket, ssl: ssl.SSLContext | None = None) -> None:
        """Serve on each of `socks` (bound, listening, non-blocking)."""
        if self._servers:
            raise StateError("server already started")
        loop = asyncio.get_running_loop()
        for sock in socks:
            server = await loop.create_server(lambda: _Connection(self, loop), sock=sock, ssl=ssl, backlog=2048)
            self._servers.append(server)
        self._sweeper = loop.create_task(self._close_idle_forever(loop), name="http-keep-alive")

    async def _close_idle_forever(self, loop: asyncio.AbstractEventLoop) -> None:
        # One sweep for every connection instead of a timer armed and cancelled per request.
        while True:
            await asyncio.sleep(min(5.0, self.keep_alive_s / 2))
            idle_since = loop.time() - self.keep_alive_s
            for conn in [c for c in self.connections if c.current is None and c.last_active < idle_since]:
                conn.close()

    async def stop(self, drain_timeout_s: float) -> None:
        """Stop accepting, close idle connections, let in-flight answers finish (bounded), close the rest."""
        if not self._servers:
            return
        servers, self._servers = self._servers, []
        self.draining = True
        for server in servers:
            server.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        for conn in [c for c in self.connections if c.current is None]:
            conn.close()
        if self.connections:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._emptied.wait(), drain_timeout_s)
        for conn in list(self.connections):
            conn.abort()
        for server in servers:
            await server.wait_closed()


class _Connection(asyncio.Protocol):
    """One client connection: parses requests and answers them one at a time, in order."""

    def __init__(self, server: LeanServer, loop: asyncio.AbstractEventLoop) -> None:
        self.server = server
        self.loop = loop
        self.app = server.app
        self.parser = httptools.HttpRequestParser(self)
        self.parser.set_dangerous_leniencies(**_STRICT)
        self.transport: asyncio.Transport | None = None
        self.client: tuple[str, int] | None = None
        self.local: tuple[str, int] | None = None
        #: The exchange being answered, the one being received, and those received in between.
        self.current: _Exchange | None = None
        self.parsing: _Exchange | None = None
        self.queued: deque[_Exchange] = deque()
        self.last_active = loop.time()
        self.read_paused = self.write_paused = self.lost = self.upgraded = False
        self.refused = self.lingering = False  # refused: nothing more is parsed
        #: While lingering: when it ends at the latest, what was dropped, its timer.
        self._linger_until = 0.0
        self._lingered = 0
        self._linger_timer: asyncio.TimerHandle | None = None
        self._drained: asyncio.Future[None] | None = None
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        #: The head being read: its size as the callbacks saw it (the URL as it comes, a
        #: header once whole), and in raw bytes read after the packet it began in (httptools
        #: buffers a header until it ends, so only this bounds one endless header).
        self._head_bytes = self._head_raw = 0
        self._in_head = self._head_fresh = False
        self._expect_continue = self._keep_alive_asked = False
        #: The framing fields of the head being read: Content-Length (0: none), how many
        #: there were, Transfer-Encoding's value and how many, Host fields; `_suspect` once
        #: any of them may be refused (one check per head on the common path).
        self._length = self._lengths = self._encodings = self._hosts = 0
        self._encoding = b""
        self._suspect = False
        self._framing_error = ""

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        peer = transport.get_extra_info("peername")
        local = transport.get_extra_info("sockname")
        self.client = (str(peer[0]), int(peer[1])) if isinstance(peer, tuple) else None
        self.local = (str(local[0]), int(local[1])) if isinstance(local, tuple) else None
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        server = self.server
        server.connections.discard(self)
        if server.draining and not server.connections:
            server.emptied()
        for exchange in {self.current, self.parsing, *self.queued}:
            if exchange is not None:
                exchange.disconnected()
        self.queued.clear()
        if self._linger_timer is not None:
            self._linger_timer.cancel()
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def data_received(self, data: bytes) -> None:
        if self.lingering:
            self.last_active = self.loop.time()
            self._lingered += len(data)
            if self._lingered > self.server.lingering.max_bytes and self.transport is not None:
                self.transport.close()
            return
        if self.upgraded or self.refused:
            return  # what follows an upgrade request is not HTTP/1.1; after a refusal, nothing is read
        self.last_active = self.loop.time()
        self._head_fresh = False
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.upgraded = True
            for exchange in (self.parsing, *self.queued, self.current):
                if exchange is not None:
                    exchange.keep_alive = False
        except httptools.HttpParserError as exc:
            if self._head_bytes > self.server.max_head_bytes:  # raised by a callback: `_HeadTooLarge`
                self._refuse_head()
            else:  # llhttp's reasons are constant strings: they name the rule, not the input
                reason = self._framing_error or ("" if isinstance(exc, httptools.HttpParserCallbackError) else str(exc))
                self._refuse(_problem(BadRequest(f"malformed HTTP request: {reason}")) if reason else _MALFORMED)
        else:
            if self._in_head and not self._head_fresh:  # all of this packet is head
                self._head_raw += len(data)
                if self._head_raw > self.server.max_head_bytes:
                    self._refuse_head()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._head_bytes = self._head_raw = 0
        self._in_head = self._head_fresh = True
        self._expect_continue = self._keep_alive_asked = self._suspect = False
        self._length = self._lengths = self._encodings = self._hosts = 0

    def on_url(self, url: bytes) -> None:
        self._head_bytes += len(url)
        if self._head_bytes > self.server.max_head_bytes:
            raise _HeadTooLarge  # before keeping any of it
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value)
        if self._head_bytes > self.server.max_head_bytes:
            raise _HeadTooLarge
        if not self._in_head:
            return  # a trailer field (RFC 9110 §6.5.1): dropped, or it would pass for a header
        name = name.lower()
        self._headers.append((name, value))
        if name not in _NOTED:  # most headers: one lookup
            return
        if name == b"content-length":
            self._lengths += 1
            self._suspect = self._suspect or self._lengths > 1
            self._length = int(value)  # llhttp checked it: digits, maybe OWS around them
        elif name == b"transfer-encoding":
            self._encodings += 1
            self._encoding = value
            self._suspect = True
        elif name == b"host":
            self._hosts += 1
            self._suspect = self._suspect or self._hosts > 1
        elif name == b"expect":
            self._expect_continue = value.lower() == b"100-continue"
        elif b"keep-alive" in value.lower():  # connection
            self._keep_alive_asked = True

    def _check_framing(self) -> None:
        """Refuse a head whose framing another parser could read differently (RFC 9112 §6, §11.2)."""
        if self._encodings:
            if self._encodings > 1 or self._encoding.strip(b" \t").lower() != b"chunked":
                self._framing_error = "a Transfer-Encoding other than chunked"
            elif self._lengths:  # llhttp refuses it too: not left to one parser's setting
                self._framing_error = "both Content-Length and Transfer-Encoding"
            elif self.parser.get_http_version() != "1.1":
                self._framing_error = "a Transfer-Encoding in an HTTP/1.0 request"
        elif self._lengths > 1:
            self._framing_error = "more than one Content-Length"
        if self._hosts > 1:
            self._framing_error = "more than one Host"
        if self._framing_error:
            raise _BadFraming(self._framing_error)

    def on_headers_complete(self) -> None:
        self._in_head = False
        if self._suspect:
            self._check_framing()
        parser = self.parser
        raw_path, _, query = self._url.partition(b"?")
        if raw_path[:1] != b"/" and raw_path != b"*":  # absolute-form (RFC 9112 §3.2.2)
            parsed = httptools.parse_url(self._url)
            raw_path, query = parsed.path or b"/", parsed.query or b""
        path = raw_path.decode("latin-1")
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": _ASGI,
            "server": self.local,
            "client": self.client,
            "scheme": self.server.scheme,
            "method": parser.get_method().decode("ascii"),
            "root_path": "",
            "path": unquote(path) if "%" in path else path,
            "raw_path": raw_path,
            "query_string": query,
            "headers": self._headers,
        }
        exchange = _Exchange(self, scope, keep_alive=parser.should_keep_alive() and not self.server.draining)
        exchange.expect_continue = self._expect_continue
        exchange.keep_alive_asked = self._keep_alive_asked
        # What is left of the body to read: unknown (-1) when chunked, none without framing.
        exchange.left = -1 if self._encodings else self._length
        self.parsing = exchange
        if self.current is None:
            self.current = exchange
            exchange.start()
        else:  # the parser moves on before it starts: its version now (see `_Exchange.start`)
            scope["http_version"] = parser.get_http_version()
            self.queued.append(exchange)
            self.update_reading()

    def on_body(self, body: bytes) -> None:
        exchange = self.parsing
        if exchange is None:
            return
        if exchange.left > 0:
            exchange.left -= len(body)
        if not exchange.finished:  # after the answer, the rest is dropped
            exchange.body.append(body)
            exchange.buffered += len(body)
            if exchange.buffered > _BODY_HIGH_WATER:
                self.update_reading()
            exchange.wake()

    def on_message_complete(self) -> None:
        exchange, self.parsing = self.parsing, None
        if exchange is not None:
            exchange.complete = True
            exchange.wake()
            if exchange.finished and exchange is self.current:
                self.next()

    # Driven by the exchanges
    def next(self) -> None:
        """The current exchange is over (answered, and its request read): start the next one."""
        done, self.current = self.current, None
        if self.lost or done is None:
            return
        if not done.keep_alive or (self.server.draining and not self.queued):
            self.close()
            return
        self.last_active = self.loop.time()
        if self.queued:
            self.current = self.queued.popleft()
            self.current.start()
        self.update_reading()

    def update_reading(self) -> None:
        """Pause reading while too much is buffered (a body not yet read, pipelined requests)."""
        if self.transport is None or self.lost:
            return
        exchange = self.parsing
        full = len(self.queued) >= _MAX_QUEUED or (
            exchange is not None and not exchange.finished and exchange.buffered > _BODY_HIGH_WATER
        )
        if full and not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()
        elif self.read_paused and not full:
            self.read_paused = False
            self.transport.resume_reading()

    async def drain(self) -> None:
        if self.write_paused and not self.lost:
            self._drained = self.loop.create_future()
            await self._drained

    def write(self, data: bytes) -> None:
        if not self.lost and not self.lingering and self.transport is not None:  # no write after EOF
            self.transport.write(data)

    def close(self, *, unread: bool = False) -> None:
        """Close; lingering (`Lingering`) after a refusal, or when `unread` input may still come."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self.lingering and not self.server.draining:
            return  # it ends on its own bounds
        if (self.refused or unread) and not self.lingering and not self.lost and not self.server.draining:
            # The answer goes out, then EOF (TLS cannot half-close: the client closes, or
            # the bounds end it); what comes next is dropped.
            self.lingering = True
            if transport.can_write_eof():
                transport.write_eof()
            if self.read_paused:
                self.read_paused = False
                transport.resume_reading()
            self.last_active = self.loop.time()
            self._linger_until = self.last_active + self.server.lingering.time_s
            self._linger_check()
            return
        transport.close()

    def _linger_check(self) -> None:
        """End lingering at its deadline or once the client was quiet for `idle_s`; else check again then."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        idle_until = self.last_active + self.server.lingering.idle_s
        if self.loop.time() >= min(self._linger_until, idle_until):
            transport.close()
        else:
            self._linger_timer = self.loop.call_at(min(self._linger_until, idle_until), self._linger_check)

    def abort(self) -> None:
        for exchange in (self.current, *self.queued):
            if exchange is not None and exchange.task is not None:
                exchange.task.cancel()
        if self.transport is not None:
            self.transport.abort()

    def _refuse(self, answer: bytes) -> None:
        self.refused = True
        refused = self.parsing
        if refused is not None:  # its body is malformed (a chunk size)
            if refused.task is not None and not refused.began:
                refused.task.cancel()  # found in the packet that held its head: the app is never called
            refused.disconnected()  # else the app hears a disconnect, not a request
        if self.current is None or not self.current.head_written:
            self.write(answer)
        self.close()

    def _refuse_head(self) -> None:
        """A head over the limit: nothing more is read, and it is answered 431 in its turn."""
        self.refused = True
        self._url = b""
        self._headers = []
        self._in_head = False
        exchange = _Exchange(self, {"type": "http", "method": "GET", "path": ""}, keep_alive=False)
        exchange.too_large = exchange.complete = True
        if self.current is None:
            self.current = exchange
            exchange.start()
        else:  # answers to the requests before it first
            self.queued.append(exchange)
            if self.transport is not None and not self.read_paused and not self.lost:
                self.read_paused = True
                self.transport.pause_reading()


class _Exchange:
    """One request and its answer, as the ASGI app sees them (`receive` and `send`)."""

    __slots__ = (
        "began",
        "body",
        "buffered",
        "chunked",
        "complete",
        "conn",
        "continued",
        "delivered",
        "expect_continue",
        "finished",
        "head_written",
        "headers",
        "keep_alive",
        "keep_alive_asked",
        "left",
        "lost",
        "scope",
        "started",
        "status",
        "task",
        "too_large",
        "waiter",
    )

    def __init__(self, conn: _Connection, scope: dict[str, Any], *, keep_alive: bool) -> None:
        self.conn = conn
        self.scope = scope
        self.keep_alive = keep_alive
        self.body: list[bytes] = []
        self.buffered = 0
        self.complete = self.delivered = self.lost = False  # request side
        self.started = self.head_written = self.finished = self.chunked = False  # answer side
        self.expect_continue = self.continued = self.too_large = False
        #: The request's `connection` header asked for keep-alive (an HTTP/1.0 client must).
        self.keep_alive_asked = False
        #: The body's bytes not yet parsed: -1 when unknown (chunked).
        self.left = 0
        self.status = 0
        self.headers: Any = ()
        self.waiter: asyncio.Future[None] | None = None
        self.task: asyncio.Task[None] | None = None
        self.began = False  # its app has been called

    def start(self) -> None:
        if self.too_large:
            self.keep_alive = False
            self.conn.write(_HEAD_TOO_LARGE)
            self.finish()
            return
        lane = self.conn.server.lane
        if lane is not None:
            try:
                if lane(self.scope, self.answer):
                    return
            except Exception:  # a bug in the lane: the app serves the request instead
                log.exception("the lane failed; the app serves the request", path=self.scope["path"])
                if self.started:
                    return
        if "http_version" not in self.scope:
            # Asked of the parser only for the app, while it is still on this request: httptools
            # formats it with str.format (~2.5k instructions), and the lane does not need it.
            self.scope["http_version"] = self.conn.parser.get_http_version()
        # An extension for an app that has its whole answer at hand (the gateway's): one call,
        # no messages. It refers to this exchange: `run` removes it, so that no reference
        # cycle is left for the garbage collector to find.
        self.scope["extensions"] = {ANSWER_EXTENSION: self.answer}
        self.task = self.conn.loop.create_task(self.run())

    async def run(self) -> None:
        scope = self.scope
        self.began = True
        try:
            await self.conn.app(scope, self.receive, self.send)
        except Exception:
            log.exception("unhandled error serving a request", path=self.scope["path"])
        except asyncio.CancelledError:  # aborted by stop(): nothing more can be said
            self.conn.close()
            raise
        finally:
            scope.pop("extensions", None)
        if not self.finished:
            if not self.head_written and not self.lost:
                self.keep_alive = False
                self.conn.write(_problem(InternalError("the request could not be answered"), self.scope["path"]))
                self.finish()
            else:
                self.conn.close()  # an answer cut short: only closing says so

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def disconnected(self) -> None:
        self.lost = True
        self.wake()

    async def receive(self) -> Message:
        while not self.lost:
            if not self.delivered:
                if self.body or self.complete:
                    body = self.body[0] if len(self.body) == 1 else b"".join(self.body)
                    self.body = []
                    self.buffered = 0
                    self.delivered = self.complete
                    if self.conn.read_paused:
                        self.conn.update_reading()
                    return {"type": "http.request", "body": body, "more_body": not self.complete}
                if self.expect_continue and not self.continued and not self.started:
                    self.continued = True
                    self.conn.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            elif self.finished:
                break
            if self.waiter is None:  # shared: an app may listen for the disconnect while it reads
                self.waiter = self.conn.loop.create_future()
            await self.waiter
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            if self.started:
                raise RuntimeError("the answer has already started")
            self.started = True
            self.status = message["status"]
            self.headers = message.get("headers", ())
            return
        if kind != "http.response.body":
            raise RuntimeError(f"unexpected ASGI message {kind!r}")
        if not self.started or self.finished:
            raise RuntimeError("an answer body before its start, or after its end")
        body: bytes = message.get("body", b"")
        more: bool = message.get("more_body", False)
        if self.lost:  # the client went away: the app may finish, nothing is written
            if not more:
                self.finished = True
            return
        bodyless = self.scope["method"] == "HEAD" or self.status < 200 or self.status in (204, 304)
        if not self.head_written:
            self.head_written = True
            head = self._head(None if more else len(body), bodyless)
            if bodyless or not body:
                self.conn.write(head)
            elif self.chunked:
                self.conn.write(b"%s%x\r\n%s\r\n" % (head, len(body), body))
            else:
                self.conn.write(head + body)
        elif body and not bodyless:
            self.conn.write(b"%x\r\n%s\r\n" % (len(body), body) if self.chunked else body)
        if more:
            await self.conn.drain()
            return
        if self.chunked and not bodyless:
            self.conn.write(b"0\r\n\r\n")
        self.finish()

    def answer(self, status: int, head: bytes, body: bytes) -> None:
        """The whole answer in one call, instead of two ASGI messages (`ANSWER_EXTENSION`).

        `head` is the header lines (`name: value\\r\\n` each), with the content-length;
        the server adds the status line, `date` and connection handling.
        """
        if self.started:
            raise RuntimeError("the answer has already started")
        self.started = True
        self.status = status
        if self.lost:  # the client went away: nothing is written
            self.finished = True
            return
        self.head_written = True
        head = b"%s%s%s" % (_STATUS_LINES.get(status) or b"HTTP/1.1 %d \r\n" % status, head, self._tail())
        bodyless = self.scope["method"] == "HEAD" or status < 200 or status in (204, 304)
        self.conn.write(head if bodyless or not body else head + body)
        self.finish()

    def _tail(self) -> bytes:
        """`date`, the connection header when one is due, and the blank line ending the head."""
        server = self.conn.server
        if server.draining:
            self.keep_alive = False
        elif self.left and not self.complete and (self.left < 0 or self.left > server.lingering.keep_alive_bytes):
            self.keep_alive = False  # answered early: too much of the body is left to read for the next request
        if not self.keep_alive:
            return server.date_line() + b"connection: close\r\n\r\n"
        if self.keep_alive_asked:  # HTTP/1.0 keeps the connection only when this is echoed
            return server.date_line() + b"connection: keep-alive\r\n\r\n"
        return server.date_line() + b"\r\n"

    def _head(self, length: int | None, bodyless: bool) -> bytes:
        """The status line and headers; `length` None when the app streams without one."""
        parts = [_STATUS_LINES.get(self.status) or b"HTTP/1.1 %d \r\n" % self.status]
        sized = False
        for name, value in self.headers:
            if name == b"content-length":
                sized = True
            elif name == b"connection" and value.lower() == b"close":
                self.keep_alive = False
                continue
            elif name == b"transfer-encoding":
                continue  # framing is the server's
            parts += (name, b": ", value, b"\r\n")
        if not sized and self.status >= 200 and self.status not in (204, 304):
            if length is not None:
                parts.append(b"content-length: %d\r\n" % length)
            elif not bodyless:
                self.chunked = True
                parts.append(b"transfer-encoding: chunked\r\n")
        parts.append(self._tail())
        return b"".join(parts)

    def finish(self) -> None:
        """The answer is sent: wake a `receive` waiting for it; move on once the request is read too."""
        self.finished = True
        self.wake()
        conn = self.conn
        if not self.keep_alive:
            conn.current = None
            conn.close(unread=not self.complete and self.left != 0)
        elif self.complete:
            conn.next()
        else:
            conn.update_reading()  # read (and drop) the rest of its body, then the next request
