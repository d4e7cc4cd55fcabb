"""What the gateway benchmarks run against, started and stopped in one place.

`Rig`: its own nats-server, a granian backend (gateway_backend.py) registered as the
catalog, a users service with one customer's token, and the gateways, nginx and other
proxies a benchmark starts through it — every process stopped (by process group) and
the work directory removed on exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from types import TracebackType

import aiohttp
import nats
import psutil

from meshop.mesh.registry import Instance, NatsKvRegistry
from meshop.mesh.security.identity import provision
from meshop.runtime.nats_server import EmbeddedNats, free_port

HERE = Path(__file__).resolve().parent
ADMIN_PASSWORD = "bench-admin-password"
#: A gateway with everything on: a user's token, per-address, per-user and per-route
#: limits (set high enough never to refuse), the access log and spans.
ROUTES_FULL = (
    '[limits]\nper_ip = "1000000/s"\nper_user = "1000000/s"\n'
    '[[routes]]\nprefix = "/api/catalog"\nservice = "catalog"\nauth = "user"\nrate_limit = "1000000/s"\n'
)
ROUTES_PLAIN = '[limits]\nper_ip = "off"\nper_user = "off"\n[[routes]]\nprefix = "/api/catalog"\nservice = "catalog"\n'


def pin(pid: int, cpus: set[int]) -> None:
    """Pin a process, its children and every thread of theirs to `cpus`.

    `sched_setaffinity(pid)` moves one thread only: granian's Rust runtime threads (and any
    process's helper threads) would go on running on every core, the load generator's too.
    """
    with contextlib.suppress(psutil.Error):
        for proc in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
            for thread in proc.threads():
                with contextlib.suppress(OSError):  # a thread that ended meanwhile
                    os.sched_setaffinity(thread.id, cpus)


def cpu_seconds(pid: int | None) -> float:
    if pid is None:
        return 0.0
    total = 0.0
    for proc in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


async def wait_http(url: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(url, timeout=aiohttp.ClientTimeout(total=1)) as resp:
                    if resp.status < 500:
                        return
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


class Rig:
    def __init__(self, *, backend_workers: int = 1) -> None:
        self.work = Path(tempfile.mkdtemp(prefix="meshop-bench-gw-"))
        self.processes: list[subprocess.Popen[bytes]] = []
        self._nats = EmbeddedNats(self.work / "nats")
        self._backend_workers = backend_workers
        self.env: dict[str, str] = {}
        self.backend_port = 0
        self.backend_pid = 0
        self.token = ""

    async def __aenter__(self) -> Rig:
        nats_url = await self._nats.start()
        self.nc = await nats.connect(nats_url)
        self.registry = NatsKvRegistry(self.nc, servers=nats_url)
        await self.registry.start()
        self.env = {
            **os.environ,
            "MESHOP_NATS_URL": nats_url,
            "MESHOP_DATA_DIR": str(self.work),
            "MESHOP_ADMIN_PASSWORD": ADMIN_PASSWORD,
            "MESHOP_LOG_LEVEL": "warning",
            "MALLOC_ARENA_MAX": "2",
        }
        # The processes' service credentials, as `meshop up` makes them (they outlive a bench run).
        provision(self.work / "identity", ["users", "gateway"])
        try:
            await self._start_backend()
            self.token = await self._customer_token()
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(
        self, _type: type[BaseException] | None, _exc: BaseException | None, _tb: TracebackType | None
    ) -> None:
        for process in reversed(self.processes):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(10)
        await self.registry.stop()
        await self.nc.close()
        await self._nats.stop()
        shutil.rmtree(self.work, ignore_errors=True)

    def start(
        self, args: list[str], log: str, *, env: dict[str, str] | None = None, cwd: Path | None = None
    ) -> subprocess.Popen[bytes]:
        """A process of the rig's (its own process group), output to `log` in the work directory."""
        process = subprocess.Popen(
            args,
            env=env or self.env,
            cwd=cwd,
            stdout=(self.work / log).open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.processes.append(process)
        return process

    def gateway(
        self, name: str, routes: str, *, access_log: bool, spans: bool, port: int = 0, **env: str
    ) -> tuple[subprocess.Popen[bytes], str]:
        """One `meshop run gateway` process with `routes` (a routes file's text); its URL."""
        routes_file = self.work / f"routes-{name}.toml"
        routes_file.write_text(routes)
        port = port or free_port()
        gateway_env = {
            **self.env,
            "MESHOP_PORT": str(port),
            "MESHOP_INSTANCE_ID": f"bench-gw-{name}",
            "MESHOP_GATEWAY_ROUTES_FILE": str(routes_file),
            "MESHOP_GATEWAY_ACCESS_LOG": "1" if access_log else "0",
            "MESHOP_TRACING": "true" if spans else "false",
            "MESHOP_LOG_LEVEL": "info",  # the access log is an info line
            **env,
        }
        process = self.start([sys.executable, "-m", "meshop", "run", "gateway"], f"gateway-{name}.log", env=gateway_env)
        return process, f"http://127.0.0.1:{port}"

    def nginx(self, *, workers: int = 1) -> tuple[subprocess.Popen[bytes], str]:
        """nginx in front of the backend: keep-alive upstream, no access log; its URL."""
        port = free_port()
        conf = self.work / f"nginx-{port}.conf"
        conf.write_text(
            f"""worker_processes {workers};
daemon off;
pid {self.work}/nginx-{port}.pid;
error_log {self.work}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  upstream backend {{ server 127.0.0.1:{self.backend_port}; keepalive 128; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{ proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; }}
  }}
}}
"""
        )
        process = self.start(["nginx", "-c", str(conf), "-p", str(self.work)], "nginx.log")
        return process, f"http://127.0.0.1:{port}"

    async def _start_backend(self) -> None:
        self.backend_port = free_port()
        backend = self.start(
            [
                *(sys.executable, "-m", "granian", "--interface", "asgi", "--host", "127.0.0.1"),
                *("--port", str(self.backend_port), "--workers", str(self._backend_workers)),
                *("--loop", "uvloop", "--no-log", "gateway_backend:app"),
            ],
            "backend.log",
            cwd=HERE,
        )
        self.backend_pid = backend.pid
        await wait_http(f"http://127.0.0.1:{self.backend_port}/ready")
        instance = Instance(
            service="catalog", instance_id="bench-backend", address="127.0.0.1", port=self.backend_port, pid=backend.pid
        )
        await self.registry.register(instance)

    async def _customer_token(self) -> str:
        self.start([sys.executable, "-m", "meshop", "run", "users"], "users.log")
        deadline = time.monotonic() + 60
        while not self.registry.instances("users"):
            if time.monotonic() > deadline:
                raise RuntimeError("users did not register")
            await asyncio.sleep(0.1)
        users_url = self.registry.instances("users")[0].url
        body = {"email": f"bench-{uuid.uuid4().hex[:8]}@example.com", "password": "bench-password", "name": "Bench"}
        async with aiohttp.ClientSession() as session:
            async with session.post(users_url + "/register", json=body) as resp:
                assert resp.status == 201, await resp.text()
            async with session.post(users_url + "/login", json=body) as resp:
                return str((await resp.json())["access_token"])
