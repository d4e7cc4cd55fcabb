"""The lab's relay: bytes through both ways, a round trip's delay, partitions and healing."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from meshop.lab.relay import DelayRelay, Route, parse_route
from meshop.runtime.nats_server import free_port


@pytest.fixture
def echo_port() -> Iterator[int]:
    """A TCP echo server on loopback, one thread per connection."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def serve(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    def accept() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    yield port
    server.close()


def relay_to(port: int, delay_s: float = 0.0) -> DelayRelay:
    relay = DelayRelay([Route("127.0.0.1", free_port(), "127.0.0.1", port)], delay_s=delay_s)
    relay.start()
    return relay


def round_trip(port: int, payload: bytes = b"ping") -> tuple[bytes, float]:
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        start = time.monotonic()
        sock.sendall(payload)
        got = b""
        while len(got) < len(payload):
            chunk = sock.recv(65536)
            if not chunk:
                break
            got += chunk
        return got, time.monotonic() - start


def test_bytes_go_through_both_ways(echo_port: int) -> None:
    relay = relay_to(echo_port)
    try:
        payload = bytes(range(256)) * 1000  # several chunks each way
        assert round_trip(relay.routes[0].listen_port, payload)[0] == payload
    finally:
        relay.stop()


def test_a_delayed_link_holds_each_round_trip_for_the_delay(echo_port: int) -> None:
    relay = relay_to(echo_port, delay_s=0.05)
    try:
        got, seconds = round_trip(relay.routes[0].listen_port)
        assert got == b"ping"
        assert 0.05 <= seconds < 1.0  # generous: the delay is the behaviour, not the machine's speed
    finally:
        relay.stop()


def cut_off(sock: socket.socket) -> bool:
    """Whether the connection was reset or closed under us (no echo comes back)."""
    try:
        sock.sendall(b"b")
        return sock.recv(1) == b""
    except OSError:
        return True


def refused(port: int) -> bool:
    try:
        return round_trip(port)[0] == b""
    except OSError:
        return True


def test_a_partition_resets_open_connections_and_refuses_new_ones_until_healed(echo_port: int) -> None:
    relay = relay_to(echo_port)
    port = relay.routes[0].listen_port
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(b"a")
            assert sock.recv(1) == b"a"
            relay.partition()
            assert cut_off(sock)
        assert refused(port)
        relay.heal()
        assert round_trip(port)[0] == b"ping"
    finally:
        relay.stop()


@pytest.mark.parametrize("text", ["127.0.0.1:1", "a:1=b", ":1=b:2", "a:x=b:2"])
def test_a_malformed_route_is_refused_with_its_form(text: str) -> None:
    with pytest.raises(ValueError, match="LISTEN_HOST:PORT=TO_HOST:PORT"):
        parse_route(text)


def test_a_route_parses() -> None:
    assert parse_route("10.77.1.1:7001=10.77.1.12:4222") == Route("10.77.1.1", 7001, "10.77.1.12", 4222)
