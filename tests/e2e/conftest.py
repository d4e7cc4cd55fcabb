"""A whole shop started with `meshop up` on free ports, shared by the end-to-end tests."""

from __future__ import annotations

import json
import os
import queue
import signal
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


def start_shop(data_dir: Path, *args: str, env: dict[str, str] | None = None) -> Shop:
    port = free_port()
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


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shop]:
    running = start_shop(tmp_path_factory.mktemp("shop"))
    yield running
    running.stop()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as opened:
        yield opened
