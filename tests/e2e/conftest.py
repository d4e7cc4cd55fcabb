"""A whole shop started with `meshop up` on free ports, for the end-to-end tests: `shop`, shared by
the modules that only use one, or a module's own from `start_shop`."""

from __future__ import annotations

import json
import os
import queue
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from meshop.runtime.nats_server import free_port

READY_TIMEOUT_S = 60
EPHEMERAL_PORTS = Path("/proc/sys/net/ipv4/ip_local_port_range")
#: What the supervisor says when one of its processes exits (and it restarts it).
EXITED = " exited with code "


@dataclass
class Shop:
    url: str
    data_dir: Path
    process: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    _queue: queue.Queue[str] = field(default_factory=queue.Queue)
    _reader: threading.Thread = field(init=False)

    def output(self) -> str:
        while not self._queue.empty():
            self.lines.append(self._queue.get_nowait())
        return "".join(self.lines)

    def status(self) -> list[dict[str, Any]]:
        """`meshop status --json` of this shop: every registered instance and its health."""
        out = subprocess.run(
            [sys.executable, "-m", "meshop", "status", "--json", "--data-dir", str(self.data_dir)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert out.returncode == 0, f"meshop status exited {out.returncode}: {out.stderr[-2000:]}"
        return list(json.loads(out.stdout))

    def stop(self, timeout_s: float = 15.0, sig: signal.Signals = signal.SIGTERM) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                raise
            finally:
                self._reader.join(timeout=5)
                if self.process.stdout is not None:
                    self.process.stdout.close()
        return self.process.returncode


def gateway_port() -> int:
    """A free port below the kernel's ephemeral range, for a shop's gateway to listen on.

    `free_port()` is one the kernel picks from that range, where every outgoing connection's
    local port comes from too: in the seconds before the gateway binds it (the shop's own
    processes open dozens meanwhile), a connection may take it, and while that connection
    lasts (one to NATS: the whole run) the gateway cannot listen on it (EADDRINUSE).
    """
    low = int(EPHEMERAL_PORTS.read_text().split()[0]) if EPHEMERAL_PORTS.exists() else 1024
    below = range(max(1024, low - 10_000), low)  # (32768 by default: 22768-32767, clear of well-known ports)
    for port in random.sample(below, min(200, len(below))):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    return free_port()


def start_shop(data_dir: Path, *args: str, env: dict[str, str] | None = None) -> Shop:
    port = gateway_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "meshop", "up", "--port", str(port), "--data-dir", str(data_dir), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**{k: v for k, v in os.environ.items() if k != "MESHOP_ADMIN_PASSWORD"}, **(env or {})},
        start_new_session=True,
    )
    shop = Shop(url=f"http://127.0.0.1:{port}", data_dir=data_dir, process=process)

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            shop._queue.put(line)

    shop._reader = threading.Thread(target=pump, daemon=True)
    shop._reader.start()
    deadline = time.monotonic() + READY_TIMEOUT_S
    while "the shop is at" not in shop.output():
        if process.poll() is not None or time.monotonic() > deadline:
            shop.stop()
            raise AssertionError(f"meshop up did not become ready:\n{shop.output()[-4000:]}")
        time.sleep(0.1)
    return shop


class SharedShop:
    """The shop of every module that only uses one: started for the first such module, stopped
    after the last (`pytest_collection_modifyitems` runs them one after another).

    Starting a shop is most of an end-to-end module's time (13-17 s on a slow VM). Stopped as
    soon as no module needs it, it does not run beside the other modules' shops.
    """

    def __init__(self, data_dirs: pytest.TempPathFactory) -> None:
        self._data_dirs = data_dirs
        self._running: Shop | None = None

    def running(self) -> Shop:
        """The shop, started unless it runs (a module that stopped it fails, not every one after it)."""
        if self._running is None or self._running.process.poll() is not None:
            self._running = start_shop(self._data_dirs.mktemp("shared"))
        return self._running

    def stop(self) -> None:
        if self._running is not None:
            self._running.stop()
            self._running = None


SHARED = pytest.StashKey[SharedShop]()
#: The modules that use the shared shop, by path.
SHARING = pytest.StashKey[set[Path]]()


def pytest_collection_modifyitems(session: pytest.Session, items: list[pytest.Item]) -> None:
    """The modules that share the shop run first among the end-to-end modules, in their order."""
    here = Path(__file__).parent
    e2e = [i for i, item in enumerate(items) if item.path.is_relative_to(here)]
    if not e2e:
        return
    sharing = {item.path for item in items if "shared_shop" in getattr(item, "fixturenames", ())}
    session.config.stash[SHARING] = sharing
    block = items[e2e[0] : e2e[-1] + 1]
    block.sort(key=lambda item: item.path not in sharing)  # stable: every other order kept
    items[e2e[0] : e2e[-1] + 1] = block


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """After the last module of the shared shop (its fixtures torn down, checks included): stop it."""
    yield
    shared = item.config.stash.get(SHARED, None)
    if shared is not None and (nextitem is None or nextitem.path not in item.config.stash.get(SHARING, set())):
        shared.stop()


@pytest.fixture(scope="session")
def shared_shop(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedShop]:
    shared = request.config.stash.setdefault(SHARED, SharedShop(tmp_path_factory))
    yield shared
    shared.stop()


@pytest.fixture(scope="module")
def shop(shared_shop: SharedShop) -> Iterator[Shop]:
    """The shared shop, for a module that only uses it: other modules have used it before.

    So its tests compare before and after (stock, counters) and sign up their own users,
    never count from a fresh shop. A module that configures the shop (an env, `--replicas`),
    stops it or kills one of its processes starts its own with `start_shop`. Checked: the
    module leaves the shop running with no process of it exited (killed, or crashed).
    """
    running = shared_shop.running()

    def exits() -> list[str]:
        return [line for line in running.output().splitlines() if EXITED in line]

    before = len(exits())
    yield running
    assert running.process.poll() is None, "this module stopped the shared shop: give it its own (start_shop)"
    assert exits()[before:] == [], "a process of the shared shop exited during this module"


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as opened:
        yield opened
