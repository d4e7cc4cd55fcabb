"""`meshop up`: run the whole shop as supervised processes on one machine.

Starts the embedded NATS server (unless `MESHOP_NATS_URL` names one), then every service
process and the gateway; prints the gateway URL once every process has registered and
the gateway is ready; restarts a crashed process with exponential backoff; on SIGINT or
SIGTERM stops the gateway, then the services (each drains and deregisters), then NATS.
Children die with the supervisor even if it is killed (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import shlex
import signal
import sys
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import nats

from meshop.mesh.registry.nats_kv import NatsKvRegistry
from meshop.mesh.security import scrape_token
from meshop.mesh.security.identity import provision, renew_forever
from meshop.mesh.security.nats_auth import NatsLogin, servers
from meshop.mesh.service.lifecycle import ServiceDefinition
from meshop.mesh.service.settings import Settings, load_settings
from meshop.runtime.nats_server import EmbeddedNats, die_with_parent
from meshop.runtime.nats_users import USERS_DIR, credentials_file, ensure_users, render_server_config
from meshop.services import PROCESSES

STOP_TIMEOUT_S = 8.0
READY_TIMEOUT_S = 60.0
_COLORS = ["36", "32", "33", "35", "34", "31", "96", "92", "93", "95"]


def parse_replicas(values: Iterable[str], *, known: Iterable[str] = PROCESSES) -> dict[str, int]:
    """`["catalog=3"]` → `{"catalog": 3}`; rejects services not `known` and bad counts."""
    names = list(known)
    counts: dict[str, int] = {}
    for value in values:
        name, sep, number = value.partition("=")
        if not sep or name not in names or not number.isdigit() or not 1 <= int(number) <= 16:
            raise ValueError(
                f"--replicas expects SERVICE=N with N in 1..16 and SERVICE one of {', '.join(names)}; got {value!r}"
            )
        counts[name] = int(number)
    return counts


@dataclass
class Child:
    """One supervised process."""

    name: str
    service: str
    #: What the worker loads: the shop's process name, or another service's `module:ATTRIBUTE`.
    load: str
    env: dict[str, str]
    color: str
    instance_id: str  # its first process's; a restarted one's adds "-r<restarts>"
    process: asyncio.subprocess.Process | None = None
    state: str = "starting"
    restarts: int = 0
    started_at: float = 0.0
    stopping: bool = False
    _task: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None


class Supervisor:
    def __init__(
        self,
        *,
        data_dir: Path,
        gateway_port: int,
        replicas: dict[str, int],
        settings: Settings | None = None,
        cli: str = "meshop",
        extra: Mapping[str, ServiceDefinition] | None = None,
    ) -> None:
        self.settings = settings or load_settings()
        #: Services built elsewhere on the mesh that run beside the shop, by `module:ATTRIBUTE`.
        self.extra = dict(extra or {})
        #: Every process to run, in start order, with what the worker is given to load it.
        self.processes = {**{name: name for name in PROCESSES}, **{d.name: spec for spec, d in self.extra.items()}}
        #: How the user runs the other commands (`.venv/bin/meshop` unless the venv is active).
        self.cli = cli
        self.data_dir = data_dir.resolve()
        self._dir_option = "" if data_dir == Path(".meshop") else f" --data-dir {shlex.quote(str(self.data_dir))}"
        self.gateway_port = gateway_port
        self.replicas = replicas
        self.children: list[Child] = []
        self.nats: EmbeddedNats | None = None
        self.nats_url = ""
        self._stop = asyncio.Event()
        self._tty = sys.stdout.isatty()

    def say(self, text: str) -> None:
        print(f"meshop | {text}", flush=True)

    async def run(self) -> int:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        lock = os.open(self.data_dir / "up.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.say(f"another `meshop up` is running on {self.data_dir}")
            return 1
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._stop.set)
        started = time.monotonic()
        gateways = self.replicas.get("gateway", 1)
        if gateways > 1 and not os.environ.get("MESHOP_GATEWAY_REDIS_URL"):
            self.say(
                f"{gateways} gateway processes share port {self.gateway_port}; each keeps its own rate-limit "
                "state, so a client spread over them may get up to that many times its limits "
                "(MESHOP_GATEWAY_REDIS_URL shares it)"
            )
        stopping: float | None = None
        renewing: asyncio.Task[None] | None = None
        try:
            await self._start_nats()
            # Service identity: this supervisor is the issuer; every process reads its renewed files.
            identity = self.settings.identity_dir or self.data_dir / "identity"
            lifetime = self.settings.identity_lifetime_s
            provision(identity, self.processes, lifetime_s=lifetime)
            renewing = asyncio.create_task(renew_forever(identity, list(self.processes), lifetime_s=lifetime))
            self._spawn_children()
            ready = asyncio.create_task(self._announce_when_ready(started))
            await self._stop.wait()
            stopping = time.monotonic()
            self.say("stopping: draining the gateway, then the services")
            ready.cancel()
            await asyncio.wait({ready})  # its NATS connection closes before NATS stops
        finally:
            stopping = stopping or time.monotonic()
            if renewing is not None:
                renewing.cancel()
            await self._shutdown()
            os.close(lock)
        self.say(f"stopped in {time.monotonic() - stopping:.1f}s (the shop ran {_duration(stopping - started)})")
        return 0

    async def _start_nats(self) -> None:
        users = ensure_users(self.data_dir, extra=list(self.extra.values()))  # one per process and CLI command
        settings = self.settings
        if settings.nats_url:
            self.nats_url = settings.nats_url
            self.say(
                f"using external NATS at {self.nats_url}; its server must admit the users of "
                f"{self.data_dir / USERS_DIR / 'server.conf'} (a server without authorization ignores them)"
            )
        else:
            tls = None
            if settings.nats_tls_cert_file and settings.nats_tls_key_file:
                tls = (settings.nats_tls_cert_file, settings.nats_tls_key_file)
            self.nats = EmbeddedNats(
                self.data_dir / "nats",
                binary=settings.nats_server_bin,
                authorization=render_server_config(users, extra=list(self.extra.values())),
                tls=tls,
            )
            self.nats_url = await self.nats.start()
            pid = self.nats.process.pid if self.nats.process else "?"
            self.say(f"embedded NATS (JetStream) at {self.nats_url}, pid {pid}")
        (self.data_dir / "nats.url").write_text(self.nats_url + "\n")

    def _spawn_children(self) -> None:
        run_id = uuid.uuid4().hex[:6]
        base = {
            **os.environ,
            "MESHOP_NATS_URL": self.nats_url,
            "MESHOP_DATA_DIR": str(self.data_dir),
            "PYTHONUNBUFFERED": "1",
        }
        base.setdefault("MESHOP_LOG_FORMAT", "console")
        contracts = [d.contract.__name__ for d in self.extra.values() if d.contract is not None]
        if contracts:  # the gateway routes and documents them beside the shop's
            base["MESHOP_GATEWAY_CONTRACTS"] = ",".join(contracts)
        if self.settings.metrics_token_file is None:  # Prometheus and the console scrape with it
            base["MESHOP_METRICS_TOKEN_FILE"] = str(scrape_token.create(self.data_dir / scrape_token.FILENAME))
        # Fewer glibc malloc arenas: each thread (heartbeat, argon2) would otherwise get
        # its own, which shows up as RSS without serving anything. A fixed mmap threshold
        # makes argon2's 19 MiB buffers mmapped, so they return to the OS after a login.
        base.setdefault("MALLOC_ARENA_MAX", "2")
        base.setdefault("MALLOC_MMAP_THRESHOLD_", "131072")
        n = 0
        for service in self.processes:
            count = self.replicas.get(service, 1)
            for index in range(1, count + 1):
                instance_id = f"{run_id}-{index}"
                env = {
                    **base,
                    "MESHOP_NATS_CREDENTIALS_FILE": str(credentials_file(self.data_dir, service)),
                    "MESHOP_INSTANCE_ID": instance_id,
                    "MESHOP_PORT": str(self.gateway_port if service == "gateway" else 0),
                }
                if service == "gateway" and count > 1:  # one port, N processes: the kernel spreads connections
                    env["MESHOP_REUSE_PORT"] = "1"
                name = service if count == 1 else f"{service}-{index}"
                child = Child(
                    name=name,
                    service=service,
                    load=self.processes[service],
                    env=env,
                    color=_COLORS[n % len(_COLORS)],
                    instance_id=instance_id,
                )
                n += 1
                child._task = asyncio.create_task(self._supervise(child), name=f"supervise-{name}")
                self.children.append(child)

    async def _supervise(self, child: Child) -> None:
        backoff = 0.5
        while not child.stopping:
            child.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "meshop.runtime.worker",
                child.load,
                env=child.env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                preexec_fn=die_with_parent,
                start_new_session=True,  # a terminal's Ctrl-C reaches only us; we stop children in order
            )
            child.started_at = time.monotonic()
            child.state = "running"
            pump = asyncio.create_task(self._pump(child, child.process))
            code = await child.process.wait()
            await pump
            if child.stopping:
                child.state = "stopped"
                return
            child.state = "restarting"
            child.restarts += 1
            # A new process is a new instance: it must not inherit its predecessor's open
            # breaker, ejection or latency record in every caller, nor be confused with it in
            # traces and logs. The registry forgets the dead one when its entry expires.
            child.env["MESHOP_INSTANCE_ID"] = f"{child.instance_id}-r{child.restarts}"
            if time.monotonic() - child.started_at > 30:
                backoff = 0.5
            self.say(f"{child.name} exited with code {code}; restart #{child.restarts} in {backoff:.1f}s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), backoff)
            backoff = min(backoff * 2, 30.0)

    async def _pump(self, child: Child, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        prefix = f"\x1b[{child.color}m{child.name:>11} |\x1b[0m " if self._tty else f"{child.name:>11} | "
        while line := await process.stdout.readline():
            sys.stdout.write(prefix + line.decode(errors="replace").rstrip() + "\n")
        sys.stdout.flush()

    async def _announce_when_ready(self, started: float) -> None:
        expected = {service: self.replicas.get(service, 1) for service in self.processes}
        login = NatsLogin.load(credentials_file(self.data_dir, "up"), tls_ca_file=self.settings.nats_tls_ca_file)
        nc = await nats.connect(servers(self.nats_url), name="meshop-up", max_reconnect_attempts=-1, **login.options())
        registry = NatsKvRegistry(
            nc,
            servers=self.nats_url,
            bucket=self.settings.registry_bucket,
            ttl_s=self.settings.registry_ttl_s,
            heartbeat_s=self.settings.heartbeat_s,
            login=login,
            replicas=self.settings.nats_replicas,
        )
        scheme = "https" if self.settings.tls_cert_file else "http"
        url = f"{scheme}://127.0.0.1:{self.gateway_port}"
        try:
            await registry.start()
            deadline = time.monotonic() + READY_TIMEOUT_S
            async with aiohttp.ClientSession() as session:
                while True:
                    missing = {s: n for s, n in expected.items() if len(registry.instances(s)) < n}
                    if not missing and await _ready(session, url):
                        break
                    if time.monotonic() > deadline:
                        self.say(f"still waiting for: {', '.join(missing) or 'gateway readiness'}")
                        deadline = time.monotonic() + READY_TIMEOUT_S
                    await asyncio.sleep(0.1)
            self.print_status(registry)
            (self.data_dir / "gateway.url").write_text(url + "\n")
            self.say(
                f"ready in {time.monotonic() - started:.1f}s — the shop is at {url} · console {url}/console"
                "  (Ctrl-C to stop)"
            )
            cli = self.cli
            self.say(f"other commands, in another terminal: {cli} status{self._dir_option}  (all: {cli} --help)")
            await self._stop.wait()
        finally:
            await registry.stop()
            await nc.close()

    def print_status(self, registry: NatsKvRegistry) -> None:
        from rich.console import Console
        from rich.table import Table

        table = Table("process", "pid", "state", "restarts", "address", title="meshop processes")
        shared = self.replicas.get("gateway", 1) > 1
        for child in self.children:
            addresses = [f"{i.address}:{i.port}" for i in registry.instances(child.service) if i.pid == child.pid]
            if shared and child.service == "gateway":  # its own port, and the one all replicas serve
                addresses.append(f"shared :{self.gateway_port}")
            table.add_row(
                child.name, str(child.pid or "-"), child.state, str(child.restarts), ", ".join(addresses) or "-"
            )
        Console(force_terminal=self._tty).print(table)

    async def _shutdown(self) -> None:
        gateway = [c for c in self.children if c.service == "gateway"]
        services = [c for c in self.children if c.service != "gateway"]
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for group in (gateway, services):
            await self._terminate(group, deadline)
        if self.nats is not None:
            await self.nats.stop()
        for left in ("gateway.url", "nats.url"):  # no shop runs here now
            with contextlib.suppress(FileNotFoundError):
                (self.data_dir / left).unlink()

    async def _terminate(self, children: list[Child], deadline: float) -> None:
        for child in children:
            child.stopping = True
            if child.process and child.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    child.process.send_signal(signal.SIGTERM)
        tasks = [c._task for c in children if c._task is not None]
        if not tasks:
            return
        _done, pending = await asyncio.wait(tasks, timeout=max(0.1, deadline - time.monotonic()))
        for child in children:
            if child.process and child.process.returncode is None:
                self.say(f"{child.name} did not stop in time; killing it")
                with contextlib.suppress(ProcessLookupError):
                    child.process.kill()
        if pending:
            await asyncio.wait(pending, timeout=2.0)


def _duration(seconds: float) -> str:
    """12.3s, 7m 33s or 2h 05m."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}m {secs:02d}s" if minutes < 60 else f"{minutes // 60}h {minutes % 60:02d}m"


async def _ready(session: aiohttp.ClientSession, url: str) -> bool:
    try:
        # Our own gateway on loopback: its (maybe self-signed) certificate is not what is checked here.
        async with session.get(url + "/ready", timeout=aiohttp.ClientTimeout(total=1), ssl=False) as resp:
            return resp.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False
