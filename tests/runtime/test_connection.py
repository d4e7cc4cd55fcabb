"""The commands that read a running shop say "no running shop found" at once when none answers.

`meshop up` leaves `<data-dir>/nats.url` behind when it is killed, pointing at a port where
nothing, or something that is not NATS, listens. nats-py retried such a first connection
forever (`max_reconnect_attempts=0` means no limit), printing a traceback every 2 s.
"""

from __future__ import annotations

import asyncio
import queue
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest

from meshop.runtime.connection import CONNECT_TIMEOUT_S, unreachable
from meshop.runtime.nats_server import EmbeddedNats, free_port

COMMANDS = [
    ["status"],
    ["events", "tail"],
    ["events", "dlq"],
    ["analyze", "efficiency", "--live"],
    ["analyze", "reliability", "--live"],
    ["analyze", "littles-law", "--live"],
    ["plan", "--rps", "10"],
    ["events", "replay", "users.order-stats"],
    ["keys", "rotate"],
]
#: Generous: Python's start and the CLI's imports take most of it on a busy machine, and
#: before, these commands never returned.
BOUND_S = 10.0


def meshop(*args: str, timeout_s: float) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "meshop", *args], capture_output=True, text=True, timeout=timeout_s, check=False
    )
    return done, time.monotonic() - started


@pytest.fixture
def stale_data_dir(tmp_path: Path) -> Path:
    """A data dir whose URL files name ports nothing listens on (a shop killed before)."""
    (tmp_path / "nats.url").write_text(f"nats://127.0.0.1:{free_port()}\n")
    (tmp_path / "gateway.url").write_text(f"http://127.0.0.1:{free_port()}\n")
    (tmp_path / "admin-password").write_text("secret\n")
    return tmp_path


@pytest.fixture
def silent_listener() -> Iterator[int]:
    """A port where something that is not NATS accepts connections and says nothing."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        accepted: list[socket.socket] = []
        stop = threading.Event()

        def accept() -> None:
            server.settimeout(0.1)
            while not stop.is_set():
                try:
                    accepted.append(server.accept()[0])
                except TimeoutError:
                    continue

        thread = threading.Thread(target=accept, daemon=True)
        thread.start()
        yield int(server.getsockname()[1])
        stop.set()
        thread.join()
        for conn in accepted:
            conn.close()


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_a_command_on_a_stopped_shop_says_so_at_once(command: list[str], stale_data_dir: Path) -> None:
    done, took_s = meshop(*command, "--data-dir", str(stale_data_dir), timeout_s=30)
    assert (done.returncode, took_s < BOUND_S) == (1, True), (took_s, done.stderr)
    assert "no running shop found" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout


def test_a_url_file_naming_something_that_is_not_nats_is_no_shop(tmp_path: Path, silent_listener: int) -> None:
    (tmp_path / "nats.url").write_text(f"nats://127.0.0.1:{silent_listener}\n")
    done, took_s = meshop("status", "--data-dir", str(tmp_path), timeout_s=30)
    assert (done.returncode, took_s < BOUND_S + CONNECT_TIMEOUT_S) == (1, True), (took_s, done.stderr)
    assert "no running shop found" in done.stderr
    assert "not NATS" in done.stderr
    assert "Traceback" not in done.stderr


async def until_followed(url: str, printed: queue.Queue[str], within_s: float = 30.0) -> None:
    """Publish events until the follower prints one: then it surely follows."""
    nc = await nats.connect(url)
    try:
        deadline = time.monotonic() + within_s
        while printed.empty():
            assert time.monotonic() < deadline, "the follower printed nothing"
            await nc.publish("meshop.events.orders.Probed", b"{}")
            await asyncio.sleep(0.1)
    finally:
        await nc.close()


def test_following_events_ends_when_the_shop_stops(tmp_path: Path) -> None:
    server = EmbeddedNats(tmp_path / "nats")
    url = asyncio.run(server.start())
    (tmp_path / "nats.url").write_text(url + "\n")
    follower = subprocess.Popen(
        [sys.executable, "-m", "meshop", "events", "tail", "--follow", "--data-dir", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    printed: queue.Queue[str] = queue.Queue()
    assert follower.stdout is not None
    threading.Thread(target=lambda: printed.put(follower.stdout.readline()), daemon=True).start()  # type: ignore[union-attr]
    try:
        asyncio.run(until_followed(url, printed))
        asyncio.run(server.stop())
        _, stderr = follower.communicate(timeout=BOUND_S)
    finally:
        follower.kill()
        asyncio.run(server.stop())
    assert '"subject": "meshop.events.orders.Probed"' in printed.get()
    assert follower.returncode == 1
    assert f"the shop at {url} stopped" in stderr
    assert "Traceback" not in stderr


def test_a_server_certificate_the_cli_cannot_verify_names_the_setting_to_check() -> None:
    exc = ssl.SSLCertVerificationError(1, "certificate verify failed")
    exc.verify_message = "self-signed certificate in certificate chain"
    message = str(unreachable("nats://127.0.0.1:4222", exc))
    assert "self-signed certificate in certificate chain: is MESHOP_NATS_TLS_CA_FILE the CA" in message
