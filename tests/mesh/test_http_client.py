"""The lean HTTP/1.1 client: keep-alive reuse, chunked answers, and errors that say whether
the request may have reached the server — against real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from meshop.mesh.testing import eventually
from meshop.mesh.transport.http_client import HttpError, HttpPool
from meshop.runtime.nats_server import free_port

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture
async def server() -> AsyncIterator[Callable[[Handler], Awaitable[int]]]:
    servers: list[asyncio.Server] = []

    async def start(handler: Handler) -> int:
        async def closing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await handler(reader, writer)
            finally:
                writer.close()
                with contextlib.suppress(ConnectionError):
                    await writer.wait_closed()

        srv = await asyncio.start_server(closing, "127.0.0.1", 0)
        servers.append(srv)
        return int(srv.sockets[0].getsockname()[1])

    yield start
    for srv in servers:
        srv.close()
        await srv.wait_closed()


async def read_request(reader: asyncio.StreamReader) -> tuple[str, dict[str, str], bytes]:
    head = (await reader.readuntil(b"\r\n\r\n")).decode()
    lines = head.split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if line)
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return lines[0], headers, body


async def requests(reader: asyncio.StreamReader) -> AsyncIterator[tuple[str, dict[str, str], bytes]]:
    """Each request on a kept-alive connection, until the client closes it."""
    while True:
        try:
            yield await read_request(reader)
        except asyncio.IncompleteReadError:
            return


async def answer_ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers every request on a kept-alive connection with `ok`."""
    async for _ in requests(reader):
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()


async def answer_once_and_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers one request with `ok` (kept alive, as far as the client knows), then closes."""
    await read_request(reader)
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
    await writer.drain()
    writer.close()


async def test_connections_are_kept_alive_and_reused(server: Callable[[Handler], Awaitable[int]]) -> None:
    connections = 0
    seen: list[tuple[str, dict[str, str], bytes]] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        async for request in requests(reader):
            seen.append(request)
            writer.write(b"HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}")
            await writer.drain()

    port = await server(handler)
    pool = HttpPool()
    for n in range(5):
        reply = await pool.request("127.0.0.1", port, "POST", f"/things/{n} x", {"x-n": str(n)}, b'{"a":1}', 5.0)
        assert (reply.status, reply.headers["content-type"], reply.body) == (201, "application/json", b"{}")
    await pool.close()
    assert connections == 1
    assert seen[0][0] == "POST /things/0%20x HTTP/1.1"
    assert seen[0][1]["x-n"] == "0"
    assert seen[0][2] == b'{"a":1}'


async def test_chunked_answers_are_reassembled(server: Callable[[Handler], Awaitable[int]]) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
        await writer.drain()

    pool = HttpPool()
    reply = await pool.request("127.0.0.1", await server(handler), "GET", "/", {}, None, 5.0)
    assert reply.body == b"abcde"
    await pool.close()


async def test_a_refused_connection_was_not_sent_and_a_dropped_one_may_have_been(
    server: Callable[[Handler], Awaitable[int]],
) -> None:
    pool = HttpPool()
    with pytest.raises(HttpError) as refused:
        await pool.request("127.0.0.1", free_port(), "POST", "/", {}, b"x", 5.0)
    assert refused.value.sent is False

    async def crash(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial")
        await writer.drain()
        writer.close()

    with pytest.raises(HttpError) as dropped:
        await pool.request("127.0.0.1", await server(crash), "POST", "/", {}, b"x", 5.0)
    assert dropped.value.sent is True
    await pool.close()


async def lose_before_sending() -> tuple[HttpError, float]:
    """The race of a server killed as it is connected to: the connection is made, then closed
    by the server before the request goes out (a kept-alive one, here, to hold it still).
    The error, and how long it took."""

    srv = await asyncio.start_server(answer_once_and_close, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    pool = HttpPool()
    try:
        await pool.request("127.0.0.1", port, "GET", "/", {}, None, 3.0)
        [conn] = pool._idle[("127.0.0.1", port)]
        for _ in range(5000):  # the server's close, heard before the request is written (≤ 5 s)
            if conn.closed:
                break
            await asyncio.sleep(0.001)
        started = time.monotonic()
        deadline = asyncio.get_running_loop().time() + 3.0
        try:
            await conn.exchange(b"POST /orders HTTP/1.1\r\ncontent-length: 1\r\n\r\nx", deadline)
        except HttpError as exc:
            return exc, time.monotonic() - started
    finally:
        await pool.close()
        srv.close()
    raise AssertionError("the request was answered")


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_connection_lost_before_its_request_was_sent_reports_not_sent(loop: str) -> None:
    """Nothing reached the server, so the error says so (a retry is safe for any request),
    at once: asyncio's loop would drop the write and wait for the deadline, uvloop's raise
    a RuntimeError (which the gateway answered with a 500)."""
    import uvloop

    error, took_s = (uvloop.run if loop == "uvloop" else asyncio.run)(lose_before_sending())
    assert error.sent is False
    assert took_s < 2.0


async def test_a_timed_out_connection_is_never_reused(server: Callable[[Handler], Awaitable[int]]) -> None:
    connections = 0

    async def slow_then_fast(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        first = connections == 1
        await read_request(reader)
        if first:
            await asyncio.sleep(0.3)  # answers after the client gave up
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\n" + (b"late" if first else b"mine"))
        await writer.drain()

    port = await server(slow_then_fast)
    pool = HttpPool()
    with pytest.raises(TimeoutError):
        await pool.request("127.0.0.1", port, "GET", "/", {}, None, 0.05)
    reply = await pool.request("127.0.0.1", port, "GET", "/", {}, None, 5.0)
    assert reply.body == b"mine"  # never the late answer to the first request
    await pool.close()


@pytest.mark.parametrize(
    ("headers", "problem"),
    [
        ({"x-evil": "a\r\nhost: other"}, "line break"),
        ({"x-evil": "a\nhost: other"}, "line break"),
        ({"x-evil": "a\rb"}, "line break"),
        ({"x-ok": "fine", "x-evil\r\nhost": "other"}, "line break"),
        ({"x-evil: other": "a"}, "colon"),
    ],
)
async def test_header_injection_is_refused(headers: dict[str, str], problem: str) -> None:
    pool = HttpPool()
    with pytest.raises(ValueError, match=problem):
        await pool.request("127.0.0.1", 1, "GET", "/", headers, None, 1.0)


def test_it_runs_on_uvloop_as_the_processes_do() -> None:
    import uvloop

    async def scenario() -> bytes:
        srv = await asyncio.start_server(answer_once_and_close, "127.0.0.1", 0)
        pool = HttpPool()
        try:
            reply = await pool.request("127.0.0.1", srv.sockets[0].getsockname()[1], "GET", "/", {}, None, 5.0)
        finally:
            await pool.close()
            srv.close()
            await srv.wait_closed()
        return reply.body

    assert uvloop.run(scenario()) == b"ok"


async def test_send_uses_an_idle_connection_and_calls_back(server: Callable[[Handler], Awaitable[int]]) -> None:
    """The callback form: nothing sent without an idle connection; the reply, then the connection reused."""
    connections = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        async for line, _, _ in requests(reader):
            body = line.split()[1].encode()
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()

    port = await server(handler)
    pool = HttpPool()
    results: list[object] = []
    assert not pool.send("127.0.0.1", port, "GET", "/a", {}, None, 5.0, results.append)  # nothing idle yet
    await pool.request("127.0.0.1", port, "GET", "/first", {}, None, 5.0)
    for path in ("/b", "/c"):
        arrived = asyncio.get_running_loop().create_future()
        assert pool.send("127.0.0.1", port, "GET", path, {}, None, 5.0, arrived.set_result)
        reply = await arrived
        assert (reply.status, reply.body) == (200, path.encode())
    assert connections == 1  # the connection went back to the pool after each answer
    await pool.close()


async def test_a_pooled_connection_calls_back_in_no_context(server: Callable[[Handler], Awaitable[int]]) -> None:
    """A protocol's callbacks run in the context its connection was made in. A pooled
    connection serves later calls: their callbacks (the gateway's lane answers from them, and
    logs) must not see the context, and so the trace, of the call that made it."""
    caller: contextvars.ContextVar[str] = contextvars.ContextVar("caller", default="none")

    port = await server(answer_ok)
    pool = HttpPool()

    async def first_call() -> None:  # makes the connection, in a task whose context says so
        caller.set("the maker")
        await pool.request("127.0.0.1", port, "GET", "/", {}, None, 5.0)

    await asyncio.create_task(first_call())
    heard: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    caller.set("a later caller")
    assert pool.send("127.0.0.1", port, "GET", "/", {}, None, 5.0, lambda _: heard.set_result(caller.get()))
    assert await heard == "none"
    await pool.close()


async def test_send_reports_a_timeout_and_drops_the_connection(server: Callable[[Handler], Awaitable[int]]) -> None:
    connections = 0

    async def slow_second(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        served = 0
        async for _ in requests(reader):
            served += 1
            if served == 2 and connections == 1:
                await asyncio.sleep(0.3)  # answers after the client gave up
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            await writer.drain()

    port = await server(slow_second)
    pool = HttpPool()
    await pool.request("127.0.0.1", port, "GET", "/", {}, None, 5.0)
    arrived = asyncio.get_running_loop().create_future()
    assert pool.send("127.0.0.1", port, "GET", "/", {}, None, 0.05, arrived.set_result)
    assert isinstance(await arrived, TimeoutError)
    assert not pool.send("127.0.0.1", port, "GET", "/", {}, None, 5.0, arrived.set_result)  # not pooled again
    assert (await pool.request("127.0.0.1", port, "GET", "/", {}, None, 5.0)).body == b"ok"
    assert connections == 2
    await pool.close()


async def test_each_request_times_out_at_its_own_deadline_on_the_pools_tick(
    server: Callable[[Handler], Awaitable[int]],
) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async for _ in requests(reader):
            pass  # never answers

    port = await server(silent)
    pool = HttpPool()
    loop = asyncio.get_running_loop()
    started = loop.time()

    async def timed_out(timeout_s: float) -> float:
        with pytest.raises(TimeoutError):
            await pool.request("127.0.0.1", port, "GET", "/", {}, None, timeout_s)
        return loop.time() - started

    long, short = await asyncio.gather(timed_out(0.4), timed_out(0.1))  # in flight together
    # generous bounds: the tick is 10 ms, but a loaded CI machine may run the loop late
    assert 0.1 <= short < 0.3
    assert 0.4 <= long < 0.6
    await eventually(lambda: pool._tick is None, within_s=2, what="nothing in flight: no timer left armed")
    await pool.close()


async def test_a_connection_that_fails_to_send_is_closed_not_lost(server: Callable[[Handler], Awaitable[int]]) -> None:
    port = await server(answer_ok)
    pool = HttpPool()
    await pool.request("127.0.0.1", port, "GET", "/", {}, None, 5.0)  # one idle connection
    [conn] = pool._idle[("127.0.0.1", port)]
    assert conn.transport is not None
    close_socket = conn.transport.close

    class Refusing:  # the transport as it fails a write (a socket error the loop raises)
        def write(self, data: bytes) -> None:
            raise ConnectionResetError("reset")

        def is_closing(self) -> bool:
            return False

        def close(self) -> None:
            close_socket()

    conn.transport = Refusing()  # type: ignore[assignment]
    with pytest.raises(ConnectionResetError):
        pool.send("127.0.0.1", port, "GET", "/", {}, None, 5.0, lambda _: None)
    assert conn.closed  # not left open outside the pool
    assert not pool.send("127.0.0.1", port, "GET", "/", {}, None, 5.0, lambda _: None)  # nor pooled again
    await pool.close()
