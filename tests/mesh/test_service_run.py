"""Service.run stops on SIGTERM in any state: a container's stop must not wait for its grace period."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # nothing listens once the socket is closed


def test_sigterm_while_waiting_for_nats_stops_the_process_at_once(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "MESHOP_DATA_DIR": str(tmp_path),
        "MESHOP_NATS_URL": f"nats://127.0.0.1:{_closed_port()}",
        "MESHOP_LOG_FORMAT": "json",
    }
    with subprocess.Popen(
        [sys.executable, "-m", "meshop.runtime.worker", "gateway"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as process:
        try:
            assert process.stdout is not None
            lines: list[str] = []
            for line in process.stdout:  # start() retries NATS for as long as it takes
                lines.append(line)
                if '"nats error"' in line:
                    break
            assert process.poll() is None, "".join(lines)
            process.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            rest, _ = process.communicate(timeout=10)
            took = time.monotonic() - signalled
        finally:
            if process.poll() is None:
                process.kill()
    assert process.returncode == 0, rest
    assert '"stopping before ready"' in rest
    assert '"stopped"' in rest
    assert took < 3.0
