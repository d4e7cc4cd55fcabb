"""The lean HTTP/1.1 server every process is served by (`meshop.mesh.transport.server.LeanServer`).

Everything a client can do to it over a socket: keep-alive, pipelining, streamed bodies
both ways, 100-continue, early answers and lingering after them, malformed and smuggling
requests, app failures, drain, TLS.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import ssl
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from meshop.mesh.api.routing import problem_response
from meshop.mesh.errors import PayloadTooLarge, Unauthorized
from meshop.mesh.transport.server import ANSWER_EXTENSION, HttpServer, Lean, LeanServer, Lingering
from meshop.runtime.certs import create_dev_certificates
from meshop.runtime.nats_server import free_port
from tests.gateway.framing import ambiguous


async def _echo(request: Request) -> Response:
    body = await request.body()
    return JSONResponse(
        {
            "method": request.method,
            "path": request.url.path,
            "raw_path": request.scope["raw_path"].decode(),
            "query": request.url.query,
            "body": body.decode(),
            "client": request.client.host if request.client else None,
            "x": request.headers.get("x-thing"),
            "version": request.scope["http_version"],
        }
    )


async def _stream(_request: Request) -> Response:
    async def parts() -> AsyncIterator[bytes]:
        for n in range(3):
            yield f"part{n};".encode()

    return StreamingResponse(parts(), media_type="text/plain")


async def _fail(_request: Request) -> Response:
    raise RuntimeError("a bug")


async def _slow(_request: Request) -> Response:
    await asyncio.sleep(0.3)
    return Response(b"slow done")


async def _early(_request: Request) -> Response:
    return Response(b"too large", status_code=413)  # answers without reading the body


async def _empty(_request: Request) -> Response:
    return Response(status_code=204)


async def _over_limit(request: Request) -> Response:  # the gateway's 413: answered from the content-length alone
    return problem_response(PayloadTooLarge("request body is larger than 1048576 bytes"), instance=request.url.path)


async def _private(request: Request) -> Response:  # a service refusing a caller before reading the body
    return problem_response(Unauthorized("no credentials"), instance=request.url.path)


def _app() -> Starlette:
    routes = [
        Route("/echo/{rest:path}", _echo, methods=["GET", "POST", "HEAD"]),
        Route("/stream", _stream),
        Route("/fail", _fail),
        Route("/slow", _slow),
        Route("/early", _early, methods=["POST"]),
        Route("/empty", _empty),
        Route("/over-limit", _over_limit, methods=["POST"]),
        Route("/private", _private, methods=["POST"]),
    ]
    return Starlette(routes=routes)


@pytest.fixture
async def server() -> AsyncIterator[HttpServer]:
    served = HttpServer(Lean(_app()), host="127.0.0.1", port=0, drain_timeout_s=2.0)
    await served.start()
    yield served
    await served.stop()


async def _exchange(port: int, data: bytes, *, until: bytes | None = None, answers: int = 1) -> bytes:
    """Write `data` on a new connection and read until `answers` answers ended (or the peer closed)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    got = b""
    try:
        async with asyncio.timeout(5):
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                got += chunk
                if until is not None and got.count(until) >= answers:
                    break
    finally:
        writer.close()
    return got


def _problem(got: bytes, status: int) -> dict[str, object]:
    """The answer in `got` is a whole problem+json refusal with `status` that closes the connection."""
    head, _, body = got.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0].startswith(f"HTTP/1.1 {status} ")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    assert headers["content-type"] == "application/problem+json"
    assert headers["connection"] == "close"
    assert int(headers["content-length"]) == len(body)
    problem = json.loads(body)
    assert problem["status"] == status
    assert problem["type"].startswith("urn:meshop:problem:")
    assert "Traceback" not in body.decode()
    return problem


async def _small_head_server() -> tuple[LeanServer, int]:
    lean = LeanServer(_app(), max_head_bytes=4096)
    sock = socket.create_server(("127.0.0.1", 0))
    sock.setblocking(False)
    await lean.start(sock)
    return lean, sock.getsockname()[1]


async def _send_all(port: int, head: bytes, rest: bytes = b"", *, chunk: int = 65536) -> bytes:
    """Write `head` then `rest` in pieces, stopping early if the server answers and closes; read the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    got = b""
    try:
        async with asyncio.timeout(5):
            writer.write(head)
            for at in range(0, len(rest), chunk):
                writer.write(rest[at : at + chunk])
                try:
                    await writer.drain()
                except ConnectionError:
                    break
            while True:
                try:
                    data = await reader.read(65536)
                except ConnectionError:
                    break
                if not data:
                    break
                got += data
    finally:
        writer.close()
    return got


async def test_a_request_is_answered_with_its_path_query_body_and_headers(server: HttpServer) -> None:
    async with aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{server.port}/echo/a%2Fb/c?q=1&r=%20"
        async with session.post(url, data=b"hello", headers={"X-Thing": "yes"}) as resp:
            assert resp.status == 200
            assert resp.headers["content-length"] == str(len(await resp.read()))
            got = await resp.json()
    assert got == {
        "method": "POST",
        "path": "/echo/a/b/c",
        "raw_path": "/echo/a%2Fb/c",
        "query": "q=1&r=%20",
        "body": "hello",
        "client": "127.0.0.1",
        "x": "yes",
        "version": "1.1",
    }


async def test_keep_alive_answers_many_requests_on_one_connection_in_one_write_each(server: HttpServer) -> None:
    request = b"GET /echo/x HTTP/1.1\r\nhost: t\r\n\r\n"
    got = await _exchange(server.port, request * 3, until=b'"version":"1.1"}', answers=3)  # pipelined
    assert got.count(b"HTTP/1.1 200 OK\r\n") == 3
    assert got.count(b" GMT\r\n") == 3  # a date on every answer
    assert b"connection: close" not in got


async def test_pipelined_requests_are_answered_in_order(server: HttpServer) -> None:
    data = b"GET /slow HTTP/1.1\r\nhost: t\r\n\r\nGET /echo/second HTTP/1.1\r\nhost: t\r\n\r\n"
    got = await _exchange(server.port, data, until=b'"version":"1.1"}')
    assert got.index(b"slow done") < got.index(b"/echo/second")


async def test_the_app_sees_each_request_s_http_version_pipelined_or_not(server: HttpServer) -> None:
    # The first is asked of the parser as its app starts; the others, queued behind /slow,
    # as the parser reads them (it has moved on by the time their app starts).
    data = (
        b"GET /echo/first HTTP/1.0\r\nconnection: keep-alive\r\n\r\n"
        b"GET /slow HTTP/1.1\r\nhost: t\r\n\r\n"
        b"GET /echo/third HTTP/1.0\r\nconnection: keep-alive\r\n\r\n"
        b"GET /echo/fourth HTTP/1.1\r\nhost: t\r\n\r\n"
    )
    got = await _exchange(server.port, data, until=b'"version":', answers=3)
    versions = re.findall(rb'"path":"(/echo/\w+)".*?"version":"([0-9.]+)"', got)
    assert versions == [(b"/echo/first", b"1.0"), (b"/echo/third", b"1.0"), (b"/echo/fourth", b"1.1")]
    assert got.count(b"connection: keep-alive") == 2  # echoed to the HTTP/1.0 requests that asked


async def test_a_chunked_request_body_is_read_whole(server: HttpServer) -> None:
    async def body() -> AsyncIterator[bytes]:
        for part in (b"one ", b"two ", b"three"):
            yield part

    async with (
        aiohttp.ClientSession() as session,
        session.post(f"http://127.0.0.1:{server.port}/echo/c", data=body()) as resp,
    ):
        assert (await resp.json())["body"] == "one two three"


async def test_a_streamed_answer_without_a_length_is_chunked(server: HttpServer) -> None:
    got = await _exchange(server.port, b"GET /stream HTTP/1.1\r\nhost: t\r\n\r\n", until=b"0\r\n\r\n")
    assert b"transfer-encoding: chunked\r\n" in got
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{server.port}/stream") as resp:
        assert await resp.read() == b"part0;part1;part2;"


async def test_head_and_204_answers_have_no_body(server: HttpServer) -> None:
    data = b"HEAD /echo/h HTTP/1.1\r\nhost: t\r\n\r\nGET /empty HTTP/1.1\r\nhost: t\r\n\r\nGET /echo/e HTTP/1.1\r\n\r\n"
    got = await _exchange(server.port, data, until=b'"version":"1.1"}')
    head, empty, last = got.split(b"HTTP/1.1 ")[1:]
    assert head.startswith(b"200")
    assert head.endswith(b"\r\n\r\n")  # the length a GET would have, and no body
    assert empty.startswith(b"204")
    assert empty.endswith(b"\r\n\r\n")
    assert last.startswith(b"200")


async def test_expect_100_continue_is_answered_before_the_body_is_sent(server: HttpServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"POST /echo/e HTTP/1.1\r\nhost: t\r\ncontent-length: 2\r\nexpect: 100-continue\r\n\r\n")
    async with asyncio.timeout(5):
        assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"hi")
        assert b'"body":"hi"' in await reader.readuntil(b"}")
    writer.close()


async def test_an_early_answer_drops_the_unread_body_and_keeps_the_connection(server: HttpServer) -> None:
    body = b"x" * 1_000_000
    data = b"POST /early HTTP/1.1\r\nhost: t\r\ncontent-length: %d\r\n\r\n%sGET /echo/next HTTP/1.1\r\n\r\n" % (
        len(body),
        body,
    )
    got = await _exchange(server.port, data, until=b'"version":"1.1"}')
    assert got.startswith(b"HTTP/1.1 413 ")
    assert b"/echo/next" in got


async def test_a_malformed_request_is_refused_with_400_and_the_connection_closed(server: HttpServer) -> None:
    got = await _exchange(server.port, b"GET /echo/x HTTP/1.1\r\nbad header line\r\n\r\n")
    assert got.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"connection: close" in got


async def test_a_malformed_request_is_a_400_problem(server: HttpServer) -> None:
    problem = _problem(await _exchange(server.port, b"GET /echo/x HTTP/1.1\r\nbad header line\r\n\r\n"), 400)
    assert problem["type"] == "urn:meshop:problem:bad-request"
    assert "instance" not in problem  # nothing trustworthy to name
    problem = _problem(await _exchange(server.port, b"NOT HTTP AT ALL\r\n\r\n"), 400)
    assert problem["title"] == "Bad request"


async def test_an_app_that_raises_before_answering_gets_a_500_problem() -> None:
    async def broken(scope: Scope, receive: Receive, send: Send) -> None:
        raise RuntimeError("a bug")

    served = HttpServer(Lean(broken), host="127.0.0.1", port=0)
    await served.start()
    try:
        problem = _problem(await _exchange(served.port, b"GET /fail HTTP/1.1\r\nhost: t\r\n\r\n"), 500)
        assert problem["type"] == "urn:meshop:problem:internal"
        assert problem["instance"] == "/fail"
        assert "a bug" not in json.dumps(problem)  # the exception is logged, not told
    finally:
        await served.stop()


async def test_an_oversized_header_is_a_431_problem() -> None:
    lean, port = await _small_head_server()
    try:
        filler = b"x-filler: " + b"x" * 8000 + b"\r\n"
        problem = _problem(await _exchange(port, b"GET /echo/x HTTP/1.1\r\nhost: t\r\n" + filler + b"\r\n"), 431)
        assert problem["type"] == "urn:meshop:problem:headers-too-large"
        many = b"".join(b"x-h%d: %s\r\n" % (n, b"v" * 100) for n in range(100))  # many small ones add up
        _problem(await _exchange(port, b"GET /echo/x HTTP/1.1\r\n" + many + b"\r\n"), 431)
        got = await _exchange(port, b"GET /echo/x HTTP/1.1\r\nx-small: " + b"x" * 3000 + b"\r\n\r\n", until=b"}")
        assert got.startswith(b"HTTP/1.1 200 OK\r\n")  # under the limit: served
    finally:
        await lean.stop(1.0)


async def test_an_oversized_url_is_a_431_problem() -> None:
    lean, port = await _small_head_server()
    try:
        problem = _problem(await _exchange(port, b"GET /echo/" + b"a" * 8000 + b" HTTP/1.1\r\nhost: t\r\n\r\n"), 431)
        assert "instance" not in problem  # the path is what was too large: not echoed
    finally:
        await lean.stop(1.0)


async def test_an_endless_head_is_refused_without_being_read_to_its_end() -> None:
    """A 2 MB request-target, or one 2 MB header, is refused once over the limit, not buffered whole."""
    lean, port = await _small_head_server()
    try:
        for head, rest in (
            (b"GET /echo/", b"a" * 2_000_000 + b" HTTP/1.1\r\n\r\n"),
            (b"GET /echo/x HTTP/1.1\r\nx-filler: ", b"x" * 2_000_000 + b"\r\n\r\n"),
        ):
            _problem(await _send_all(port, head, rest), 431)
            for conn in lean.connections:  # lingering a moment, dropping what still comes
                assert conn.refused
                assert len(conn._url) <= 4096
                assert not conn._headers
    finally:
        await lean.stop(1.0)


async def test_a_431_waits_for_the_answers_to_the_requests_before_it() -> None:
    lean, port = await _small_head_server()
    try:
        slow = b"GET /slow HTTP/1.1\r\nhost: t\r\n\r\n"
        got = await _exchange(port, slow + b"GET /echo/" + b"a" * 8000 + b" HTTP/1.1\r\n\r\n")
        first, _, second = got.partition(b"slow done")
        assert first.startswith(b"HTTP/1.1 200 OK\r\n")
        _problem(second, 431)
    finally:
        await lean.stop(1.0)


async def test_the_default_head_limit_applies_to_a_2_mb_url() -> None:
    served = HttpServer(Lean(_app()), host="127.0.0.1", port=0)
    await served.start()
    try:
        _problem(await _send_all(served.port, b"GET /", b"a" * 2_000_000 + b" HTTP/1.1\r\n\r\n"), 431)
    finally:
        await served.stop()


async def test_an_app_failure_is_a_500_and_the_server_keeps_serving(server: HttpServer) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{server.port}/fail") as resp:
            assert resp.status == 500
        async with session.get(f"http://127.0.0.1:{server.port}/echo/ok") as resp:
            assert resp.status == 200


async def test_an_app_that_never_answers_gets_a_500() -> None:
    async def silent(scope: Scope, receive: Receive, send: Send) -> None:
        return None

    served = HttpServer(Lean(silent), host="127.0.0.1", port=0)
    await served.start()
    try:
        got = await _exchange(served.port, b"GET / HTTP/1.1\r\n\r\n")
        assert got.startswith(b"HTTP/1.1 500 ")
        assert _problem(got, 500)["instance"] == "/"
    finally:
        await served.stop()


async def test_oversized_request_heads_are_refused_with_431() -> None:
    served = HttpServer(Lean(_app()), host="127.0.0.1", port=0)
    await served.start()
    try:
        filler = b"x-filler: " + b"x" * 1_200_000 + b"\r\n"
        got = await _exchange(served.port, b"GET /echo/x HTTP/1.1\r\n" + filler + b"\r\n")
        assert got.startswith(b"HTTP/1.1 431 ")
        _problem(got, 431)
    finally:
        await served.stop()


async def test_http_1_0_closes_unless_asked_to_keep_alive(server: HttpServer) -> None:
    got = await _exchange(server.port, b"GET /echo/x HTTP/1.0\r\n\r\n")  # ends when the server closes
    assert b"connection: close" in got
    got = await _exchange(server.port, b"GET /echo/x HTTP/1.0\r\nconnection: keep-alive\r\n\r\n", until=b"}")
    assert b"connection: keep-alive" in got


async def test_stop_lets_an_in_flight_request_finish() -> None:
    arrived = asyncio.Event()

    async def slow(_request: Request) -> Response:
        arrived.set()
        await asyncio.sleep(0.3)  # still at work when the stop comes
        return Response(b"slow done")

    served = HttpServer(Lean(Starlette(routes=[Route("/slow", slow)])), host="127.0.0.1", port=0, drain_timeout_s=5.0)
    await served.start()
    async with aiohttp.ClientSession() as session:
        answer = asyncio.create_task(session.get(f"http://127.0.0.1:{served.port}/slow"))
        await asyncio.wait_for(arrived.wait(), 5)
        await served.stop()
        resp = await answer
        assert resp.status == 200
        assert await resp.read() == b"slow done"
        assert resp.headers["connection"] == "close"


async def test_idle_keep_alive_connections_are_closed() -> None:
    lean = LeanServer(_app(), keep_alive_s=0.2)
    sock = socket.create_server(("127.0.0.1", 0))
    sock.setblocking(False)
    await lean.start(sock)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", sock.getsockname()[1])
        writer.write(b"GET /echo/x HTTP/1.1\r\n\r\n")
        async with asyncio.timeout(5):
            await reader.readuntil(b"}")
            assert await reader.read() == b""  # closed by the sweep
        writer.close()
    finally:
        await lean.stop(1.0)


async def test_tls_is_terminated_when_a_certificate_is_given(tmp_path: Path) -> None:
    made = create_dev_certificates(tmp_path, hosts=["127.0.0.1", "localhost"])
    served = HttpServer(Lean(_app()), host="127.0.0.1", port=0, tls=(made["cert"], made["key"]))
    await served.start()
    try:
        context = ssl.create_default_context(cafile=str(made["ca"]))
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"https://127.0.0.1:{served.port}/echo/tls", ssl=context) as resp,
        ):
            assert resp.status == 200
            assert (await resp.json())["path"] == "/echo/tls"
    finally:
        await served.stop()


async def test_an_app_can_give_its_whole_answer_in_one_call() -> None:
    """`ANSWER_EXTENSION` (the gateway's path): status, header lines and body, framed by the server."""

    async def whole(scope: Scope, receive: Receive, send: Send) -> None:
        answer = scope["extensions"][ANSWER_EXTENSION]
        body = b"" if scope["path"] == "/empty" else b"whole"
        answer(204 if not body else 200, b"x-thing: yes\r\ncontent-length: %d\r\n" % len(body), body)
        with pytest.raises(RuntimeError):
            answer(200, b"", b"again")

    served = HttpServer(Lean(whole), host="127.0.0.1", port=0)
    await served.start()
    try:
        got = await _exchange(served.port, b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n", until=b"whole", answers=2)
        assert got.count(b"HTTP/1.1 200 OK\r\nx-thing: yes\r\ncontent-length: 5\r\ndate: ") == 2  # kept alive
        assert got.endswith(b"\r\n\r\nwhole")
        assert b"connection" not in got
        got = await _exchange(served.port, b"HEAD /a HTTP/1.1\r\n\r\n", until=b"\r\n\r\n")
        assert got.startswith(b"HTTP/1.1 200 OK\r\n")
        assert got.endswith(b"\r\n\r\n")
        got = await _exchange(served.port, b"GET /empty HTTP/1.0\r\n\r\n")  # ends when the server closes
        assert got.startswith(b"HTTP/1.1 204 No Content\r\n")
        assert b"connection: close\r\n\r\n" in got
    finally:
        await served.stop()


def _named(name: str) -> Lean:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"1")]})
        await send({"type": "http.response.body", "body": name.encode()})

    return Lean(app)


async def _who(port: int) -> str:
    """The name of the process that answers a request on a fresh connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        return (await reader.read()).rpartition(b"\r\n\r\n")[2].decode()
    finally:
        writer.close()


async def test_replicas_with_reuse_port_share_one_port_and_keep_one_of_their_own() -> None:
    """The gateway's replicas on one machine (`meshop up --replicas gateway=N`)."""
    shared = free_port()
    servers = {n: HttpServer(_named(n), host="127.0.0.1", port=shared, reuse_port=True) for n in "ab"}
    own = {n: await s.start() for n, s in servers.items()}
    try:
        assert shared not in own.values()
        assert {n: await _who(port) for n, port in own.items()} == {"a": "a", "b": "b"}
        answered = Counter([await _who(shared) for _ in range(60)])
        assert set(answered) == {"a", "b"}  # the kernel spreads new connections over both
        await servers["a"].stop()  # one replica stops: the port is still served
        assert {await _who(shared) for _ in range(20)} == {"b"}
    finally:
        for server in servers.values():
            await server.stop()


async def test_without_reuse_port_a_second_server_cannot_take_a_bound_port() -> None:
    first = HttpServer(_named("a"), host="127.0.0.1", port=0)
    port = await first.start()
    try:
        with pytest.raises(OSError, match="in use"):
            await HttpServer(_named("b"), host="127.0.0.1", port=port).start()
    finally:
        await first.stop()


async def test_a_head_over_the_limit_is_431_before_routing_on_a_service_s_server_too() -> None:
    """A service's server (no `Lean`, no lane) bounds a head as the gateway's does: an unknown path is 431, not 404."""
    served = HttpServer(_app(), host="127.0.0.1", port=0)
    await served.start()
    try:
        head = b"GET /nowhere HTTP/1.1\r\nhost: t\r\nx-big: " + b"a" * 2_000_000 + b"\r\n\r\n"
        _problem(await _send_all(served.port, head), 431)
        small = b"GET /nowhere HTTP/1.1\r\nhost: t\r\nx-big: " + b"a" * 20_000 + b"\r\nconnection: close\r\n\r\n"
        assert (await _send_all(served.port, small)).startswith(b"HTTP/1.1 404 ")  # under the limit: routed
    finally:
        await served.stop()


# Early answers: a client that writes its whole body before it reads still reads the answer.

BIG = 20_000_000  # the repro: 20 MB to a gateway whose limit is 1 MiB


@pytest.fixture(params=["gateway", "service"])
async def either(request: pytest.FixtureRequest) -> AsyncIterator[HttpServer]:
    """The gateway's server (an app in `Lean`) and a service's (a plain ASGI app): one server, both ways in."""
    served = HttpServer(Lean(_app()) if request.param == "gateway" else _app(), host="127.0.0.1", port=0)
    await served.start()
    yield served
    await served.stop()


def _post_whole_body_then_read(port: int, path: str, size: int, *, extra: bytes = b"") -> bytes:
    """What urllib and most SDKs do, on a blocking socket: the head, all of the body, then read to the end."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(b"POST %s HTTP/1.1\r\nhost: t\r\ncontent-length: %d\r\n%s\r\n" % (path.encode(), size, extra))
        sock.sendall(b"x" * size)
        got = b""
        while chunk := sock.recv(65536):
            got += chunk
        return got


@pytest.mark.parametrize("close", [False, True], ids=["keep-alive", "connection-close"])
@pytest.mark.parametrize(("path", "status"), [("/over-limit", 413), ("/private", 401), ("/nowhere", 404)])
async def test_an_early_answer_is_read_by_a_client_that_sends_its_whole_body_first(
    either: HttpServer, path: str, status: int, close: bool
) -> None:
    extra = b"connection: close\r\n" if close else b""
    got = await asyncio.to_thread(_post_whole_body_then_read, either.port, path, BIG, extra=extra)
    assert got.startswith(b"HTTP/1.1 %d " % status)
    if status != 404:  # Starlette's own 404 is plain text
        assert _problem(got, status)["instance"] == path
    assert b"connection: close\r\n" in got  # 20 MB is not worth reading to keep the connection


async def test_urllib_posting_20_mb_reads_the_413_problem(either: HttpServer) -> None:
    def post() -> tuple[int, str, dict[str, object]]:
        request = urllib.request.Request(f"http://127.0.0.1:{either.port}/over-limit", data=b"x" * BIG)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=20)
        return refused.value.code, refused.value.headers["content-type"], json.loads(refused.value.read())

    status, content_type, problem = await asyncio.to_thread(post)
    assert (status, content_type, problem["status"]) == (413, "application/problem+json", 413)
    assert problem["type"] == "urn:meshop:problem:payload-too-large"


async def test_an_early_answer_to_a_chunked_body_closes_the_connection(either: HttpServer) -> None:
    """How much is left is unknown: not read to keep the connection."""
    head = b"POST /private HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n"
    got = await _send_all(either.port, head, b"100000\r\n" + b"x" * 0x100000 + b"\r\n" + b"0\r\n\r\n")
    _problem(got, 401)


async def _lingering_server(lingering: Lingering) -> tuple[LeanServer, int]:
    lean = LeanServer(_app(), lingering=lingering)
    sock = socket.create_server(("127.0.0.1", 0))
    sock.setblocking(False)
    await lean.start(sock)
    return lean, sock.getsockname()[1]


async def _closed_within(lean: LeanServer, seconds: float) -> float:
    """How long until the server has no connection left (fails past `seconds`)."""
    started = time.monotonic()
    async with asyncio.timeout(seconds):
        while lean.connections:  # noqa: ASYNC110  (the server has no event for it: polled)
            await asyncio.sleep(0.02)
    return time.monotonic() - started


async def test_lingering_ends_when_the_client_goes_quiet() -> None:
    lean, port = await _lingering_server(Lingering(idle_s=0.3, time_s=30.0))
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /over-limit HTTP/1.1\r\nhost: t\r\ncontent-length: %d\r\n\r\n" % BIG + b"x" * 100_000)
        _problem(await asyncio.wait_for(reader.read(), 5), 413)  # then EOF: the server lingers, reading
        assert len(lean.connections) == 1
        assert await _closed_within(lean, 5.0) > 0.2  # quiet for idle_s, not the 30 s of time_s
        writer.close()
    finally:
        await lean.stop(1.0)


async def test_lingering_ends_at_its_time_however_busy_the_client() -> None:
    lean, port = await _lingering_server(Lingering(idle_s=30.0, time_s=0.5))
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /over-limit HTTP/1.1\r\nhost: t\r\ncontent-length: %d\r\n\r\n" % BIG)
        _problem(await asyncio.wait_for(reader.read(), 5), 413)

        async def trickle() -> None:
            with contextlib.suppress(ConnectionError):
                while True:
                    writer.write(b"x" * 1000)
                    await writer.drain()
                    await asyncio.sleep(0.05)

        trickling = asyncio.create_task(trickle())
        await _closed_within(lean, 5.0)
        trickling.cancel()
        writer.close()
    finally:
        await lean.stop(1.0)


async def test_lingering_ends_after_max_bytes_dropped() -> None:
    lean, port = await _lingering_server(Lingering(idle_s=30.0, time_s=30.0, max_bytes=1_000_000))
    try:
        with pytest.raises(ConnectionError):  # closed with input unread: the rest of 20 MB is reset
            await asyncio.to_thread(_post_whole_body_then_read, port, "/over-limit", BIG)
        await _closed_within(lean, 5.0)
    finally:
        await lean.stop(1.0)


async def test_stop_ends_lingering_at_once() -> None:
    lean, port = await _lingering_server(Lingering(idle_s=30.0, time_s=30.0))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /over-limit HTTP/1.1\r\nhost: t\r\ncontent-length: %d\r\n\r\n" % BIG)
    _problem(await asyncio.wait_for(reader.read(), 5), 413)
    started = time.monotonic()
    await lean.stop(10.0)
    assert time.monotonic() - started < 5.0  # not the drain timeout: a lingering connection has nothing to finish
    writer.close()


# Framing: a request that two parsers could frame differently is refused, never served.


AMBIGUOUS = ambiguous()


class _Counting:
    """A backend that lists the requests it was called for, and those it received whole."""

    def __init__(self) -> None:
        self.called: list[str] = []
        self.received: list[str] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.called.append(scope["path"])
        while (message := await receive())["type"] == "http.request" and message.get("more_body", False):
            pass
        if message["type"] == "http.disconnect":
            return
        self.received.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})


@pytest.mark.parametrize("kind", ["gateway", "service"])
@pytest.mark.parametrize("name", list(AMBIGUOUS))
async def test_an_ambiguously_framed_request_is_a_400_that_reaches_nothing(kind: str, name: str) -> None:
    backend = _Counting()
    served = HttpServer(Lean(backend) if kind == "gateway" else backend, host="127.0.0.1", port=0)
    await served.start()
    try:
        got = await _exchange(served.port, AMBIGUOUS[name])  # read to the end: the server closed
        problem = _problem(got, 400)
        assert str(problem["detail"]).startswith("malformed HTTP request")
        fine = b"POST /fine HTTP/1.1\r\nhost: t\r\ncontent-length: 2\r\n\r\nhi"
        got = await _exchange(served.port, fine, until=b"ok")
        assert got.startswith(b"HTTP/1.1 200 OK\r\n")
        assert backend.called == backend.received == ["/fine"]  # neither the refused request nor what it carried
    finally:
        await served.stop()


async def test_the_framings_rfc_9112_allows_are_served() -> None:
    backend = _Counting()
    served = HttpServer(backend, host="127.0.0.1", port=0)
    await served.start()
    try:
        for request in (
            b"POST /a HTTP/1.1\r\nhost: t\r\ntransfer-encoding: Chunked \r\n\r\n2;ext=1\r\nhi\r\n0\r\n\r\n",
            b"POST /b HTTP/1.1\r\nhost: t\r\ncontent-length:  002 \r\n\r\nhi",
            b"GET /c HTTP/1.0\r\n\r\n",
        ):
            assert (await _exchange(served.port, request, until=b"ok")).startswith(b"HTTP/1.1 200 OK\r\n")
        assert backend.received == ["/a", "/b", "/c"]
    finally:
        await served.stop()


async def test_trailer_fields_are_dropped_not_merged_into_the_headers(server: HttpServer) -> None:
    request = (
        b"POST /echo/t HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n"
        b"2\r\nhi\r\n0\r\nx-thing: from-the-trailer\r\n\r\n"
    )
    got = await _exchange(server.port, request, until=b"}")
    assert b'"body":"hi"' in got
    assert b'"x":null' in got
