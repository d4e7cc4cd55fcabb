"""The HTTP server embedded in a meshop process's own event loop.

uvicorn (httptools parser) serving on a socket bound here, so port 0 gives a free port
whose number we know before registering. uvicorn's own signal handling is disabled: the
process's lifecycle owns SIGINT/SIGTERM. See docs/decisions/0002-http-server.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path

import uvicorn
from starlette.types import ASGIApp

from meshop.mesh.errors import StateError


class _EmbeddedServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


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
    ) -> None:
        self._tls = tls
        self._app = app
        self._host = host
        self._port = port
        self._drain_timeout_s = drain_timeout_s
        self._server: _EmbeddedServer | None = None
        self._task: asyncio.Task[None] | None = None
        self.port = 0

    async def start(self) -> int:
        """Bind and serve; returns the bound port."""
        if self._server is not None:
            raise StateError("server already started")
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Accepted connections inherit it: uvicorn writes a response's headers and body
        # separately, and with Nagle on, the body waits for the peer's delayed ACK (40 ms).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((self._host, self._port))
        sock.listen(2048)
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self._app,
            lifespan="off",
            http="httptools",
            loop="none",
            access_log=False,
            log_config=None,
            server_header=False,
            # meshop processes are the edge (the gateway) or behind it: a client's
            # X-Forwarded-For must not replace its address (rate limits key on it).
            proxy_headers=False,
            timeout_graceful_shutdown=max(1, round(self._drain_timeout_s)),
            timeout_keep_alive=30,
            ssl_certfile=str(self._tls[0]) if self._tls else None,
            ssl_keyfile=str(self._tls[1]) if self._tls else None,
        )
        self._server = _EmbeddedServer(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name="http-server")
        while not self._server.started:
            if self._task.done():
                self._task.result()  # raises the startup error
                raise StateError("HTTP server exited during startup")
            await asyncio.sleep(0.01)
        return self.port

    async def stop(self) -> None:
        """Stop accepting, finish in-flight requests (bounded by the drain timeout), close."""
        if self._server is None or self._task is None:
            return
        self._server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._server = None
        self._task = None
