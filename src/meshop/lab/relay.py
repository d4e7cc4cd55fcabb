"""User-space TCP relays: link delay and partitions where the kernel has no netem.

A relay listens on one address and forwards every connection to another, byte for byte.
It can hold what it forwards for a fixed time (a link's round trip, added on the way
from the connecting side, so that a request and its answer are delayed once between
them), and it can be cut: every connection through it is reset and new ones are refused
until it heals. The lab puts one on each link it wants to slow down or break.

    python -m meshop.lab.relay --route 10.77.1.1:7001=10.77.1.12:4222 [--route ...] --delay-ms 8

Threads with blocking sockets, not an event loop: an event loop's timers wait whole
milliseconds (epoll), which would hold a message's second chunk up to a millisecond
longer than its first; `time.sleep` is good to tens of microseconds. Its own cost (zero
delay) is measured by bench/latency_table.py.
"""

from __future__ import annotations

import argparse
import contextlib
import queue
import signal
import socket
import struct
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["DelayRelay", "Route", "parse_route"]

_CHUNK = 65536
_LINGER_RESET = struct.pack("ii", 1, 0)


@dataclass(frozen=True, slots=True)
class Route:
    """Listen on `listen_host:listen_port`, forward to `to_host:to_port`."""

    listen_host: str
    listen_port: int
    to_host: str
    to_port: int


def parse_route(text: str) -> Route:
    """`LISTEN_HOST:PORT=TO_HOST:PORT`, a clear ValueError otherwise."""
    listen, sep, to = text.partition("=")
    listen_host, _, listen_port = listen.rpartition(":")
    to_host, _, to_port = to.rpartition(":")
    if not (sep and listen_host and to_host and listen_port.isdigit() and to_port.isdigit()):
        raise ValueError(f"a route is LISTEN_HOST:PORT=TO_HOST:PORT, not {text!r}")
    return Route(listen_host, int(listen_port), to_host, int(to_port))


class DelayRelay:
    """Forwards each route's connections, delayed by `delay_s` on the way in, cuttable."""

    def __init__(self, routes: Sequence[Route], *, delay_s: float = 0.0) -> None:
        if delay_s < 0:
            raise ValueError(f"a delay cannot be negative, not {delay_s}")
        self.routes = list(routes)
        self.delay_s = delay_s
        self._cut = threading.Event()
        self._stopping = threading.Event()
        self._listeners: list[socket.socket] = []
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()

    @property
    def cut(self) -> bool:
        return self._cut.is_set()

    def start(self) -> None:
        """Bind every route (errors raised here), then accept in background threads."""
        for route in self.routes:
            listener = socket.create_server((route.listen_host, route.listen_port), reuse_port=False)
            self._listeners.append(listener)
        for listener, route in zip(self._listeners, self.routes, strict=True):
            threading.Thread(target=self._accept_forever, args=(listener, route), daemon=True).start()

    def stop(self) -> None:
        self._stopping.set()
        for listener in self._listeners:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        self._reset_all()

    def partition(self) -> None:
        """Reset every connection through the relay and refuse new ones until `heal`."""
        self._cut.set()
        self._reset_all()

    def heal(self) -> None:
        self._cut.clear()

    def _reset_all(self) -> None:
        with self._lock:
            sockets = list(self._open)
        for sock in sockets:
            _reset(sock)

    def _accept_forever(self, listener: socket.socket, route: Route) -> None:
        while not self._stopping.is_set():
            try:
                downstream, _ = listener.accept()
            except OSError:
                return
            if self._cut.is_set():
                _reset(downstream)
                downstream.close()
                continue
            threading.Thread(target=self._connect, args=(downstream, route), daemon=True).start()

    def _connect(self, downstream: socket.socket, route: Route) -> None:
        try:
            upstream = socket.create_connection((route.to_host, route.to_port), timeout=5)
            upstream.settimeout(None)
        except OSError:
            _reset(downstream)
            downstream.close()
            return
        for sock in (downstream, upstream):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            self._open.update((downstream, upstream))
        back = threading.Thread(target=self._pump, args=(upstream, downstream, 0.0), daemon=True)
        back.start()
        self._pump(downstream, upstream, self.delay_s)
        back.join()
        with self._lock:
            self._open.difference_update((downstream, upstream))
        for sock in (downstream, upstream):
            sock.close()

    def _pump(self, source: socket.socket, sink: socket.socket, delay_s: float) -> None:
        """Copy until EOF or reset; with a delay, each chunk leaves `delay_s` after it came, in order."""
        pending: queue.SimpleQueue[tuple[float, bytes]] = queue.SimpleQueue()
        sender = None
        if delay_s > 0:
            sender = threading.Thread(target=self._send_due, args=(pending, sink), daemon=True)
            sender.start()
        try:
            while chunk := source.recv(_CHUNK):
                if sender is None:
                    sink.sendall(chunk)
                else:
                    pending.put((time.monotonic() + delay_s, chunk))
        except OSError:
            pass
        finally:
            if sender is not None:
                pending.put((0.0, b""))
                sender.join()
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)  # the far end sees EOF, as it would through a link

    @staticmethod
    def _send_due(pending: queue.SimpleQueue[tuple[float, bytes]], sink: socket.socket) -> None:
        while True:
            due, chunk = pending.get()
            if not chunk:
                return
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            try:
                sink.sendall(chunk)
            except OSError:
                return


def _reset(sock: socket.socket) -> None:
    """Close with RST (SO_LINGER 0), as a cut link looks to both ends, and wake its readers."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m meshop.lab.relay", description=__doc__.split("\n\n")[0])
    parser.add_argument("--route", action="append", required=True, help="LISTEN_HOST:PORT=TO_HOST:PORT (repeatable)")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="held on the way from the connecting side")
    args = parser.parse_args(argv)
    try:
        routes = [parse_route(r) for r in args.route]
    except ValueError as exc:
        parser.error(str(exc))
    if args.delay_ms < 0:
        parser.error("--delay-ms cannot be negative")
    relay = DelayRelay(routes, delay_s=args.delay_ms / 1000)
    relay.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGUSR1, lambda *_: relay.partition())
    signal.signal(signal.SIGUSR2, lambda *_: relay.heal())
    print("relay ready", flush=True)
    while not stop.wait(3600):
        pass
    relay.stop()


if __name__ == "__main__":
    main()
