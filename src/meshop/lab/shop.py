"""The shop across lab hosts: a 3-node NATS cluster, a private PostgreSQL, every process apart.

`meshop lab up --hosts 4` makes the hosts (meshop.lab.hosts), then on them:

- NATS: one JetStream node on each of the first three hosts, their cluster routes through
  relays in the lab's namespace (meshop.lab.relay: one per ordered pair of nodes), so that
  one node can be partitioned from the other two while clients still reach it; every
  node admits exactly the shop's NATS users (runtime.nats_users);
- PostgreSQL: a private server from the Debian binaries on the last host, its own data
  directory, trusting the lab's subnet;
- every process with `meshop run`, as it would run in a container: its own settings, no
  supervisor, `MESHOP_NATS_REPLICAS=3`, its host's address and zone, the three NATS
  servers, service identity renewed by the process itself; each service's replicas on
  different hosts, the gateway on one or two.

The lab's directory is also a data dir for the CLI (`meshop status --data-dir DIR`): it
holds `nats.url`, `gateway.url`, the CLI's NATS users, the scrape token and `lab.json`
(hosts, processes and their pids), which `meshop lab status` and `meshop lab down` read.
Everything runs detached; `down` stops exactly the processes `up` recorded, by pid.

Each process's command line and its own settings (the `MESHOP_*` variables: addresses and
file paths, never a secret's value; `up` refuses extra settings that look like one) are
recorded too, so that `restart` can start a stopped process again as a kubelet would: the
same command, the same settings, the same host. Nothing in the lab restarts anything by
itself: `meshop chaos --lab` restarts what it kills (`kill`, then `restart`).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from meshop.lab.hosts import Host, Hosts, LabError
from meshop.mesh.security import scrape_token
from meshop.mesh.security.identity import provision
from meshop.mesh.security.nats_auth import credentials_file
from meshop.runtime.nats_server import find_binary
from meshop.runtime.nats_users import ensure_users, render_server_config
from meshop.services import PROCESSES

__all__ = [
    "LabProcess",
    "LabState",
    "alive",
    "down",
    "kill",
    "plan",
    "postgres_command",
    "postgres_data",
    "postgres_init",
    "restart",
    "server_processes",
    "status",
    "up",
]

DEFAULT_DIR = Path(".meshop-lab")
STATE_FILE = "lab.json"
NATS_NODES = 3
NATS_CLIENT_PORT, NATS_ROUTE_PORT, NATS_MONITOR_PORT = 4222, 6222, 8222
POSTGRES_PORT = 5432
GATEWAY_PORT = 8080
FIRST_SERVICE_PORT = 8100
#: A route relay's port in the lab's namespace: node i to node j listens on BASE + 10 i + j.
ROUTE_RELAY_BASE = 16000
SERVICES = [name for name in PROCESSES if name not in ("gateway", "console")]


@dataclass
class LabProcess:
    """One process the lab started: where, how to reach it, its pid and log."""

    name: str
    kind: str  # nats | relay | postgres | service
    host: str
    address: str
    port: int
    pid: int = 0
    log: str = ""
    zone: str = ""
    #: The command line (with the host's `ip netns exec` prefix) and the process's own
    #: settings on top of the caller's environment: what `restart` starts again.
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class LabState:
    lab_id: int
    directory: str
    hosts: list[dict[str, str]]
    processes: list[LabProcess] = field(default_factory=list)
    nats_url: str = ""
    gateway_urls: list[str] = field(default_factory=list)

    def save(self) -> None:
        path = Path(self.directory) / STATE_FILE
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, directory: Path) -> LabState:
        try:
            raw = json.loads((directory / STATE_FILE).read_text())
        except FileNotFoundError:
            raise LabError(f"no lab in {directory} (no {STATE_FILE}); start one with `meshop lab up`") from None
        raw["processes"] = [LabProcess(**p) for p in raw["processes"]]
        return cls(**raw)

    def lab_hosts(self) -> Hosts:
        return Hosts(self.lab_id, [Host(**h) for h in self.hosts])

    def process(self, name: str) -> LabProcess:
        for p in self.processes:
            if p.name == name:
                return p
        raise LabError(f"no process {name!r} in the lab; processes: {', '.join(p.name for p in self.processes)}")


def plan(hosts: Sequence[Host], *, replicas: int = 2, gateways: int = 1) -> list[tuple[str, Host, int]]:
    """(process, host, port) for every meshop process: each service's replicas on different hosts.

    Services start on the host after the previous one's first replica, so that no host
    holds every service's first replica; the console runs once, the gateway on the first
    `gateways` hosts.
    """
    if len(hosts) < 2:
        raise ValueError("a lab of the shop needs at least 2 hosts")
    if not 1 <= replicas <= len(hosts):
        raise ValueError(f"replicas must be 1..{len(hosts)} (one per host at most), not {replicas}")
    if not 1 <= gateways <= len(hosts):
        raise ValueError(f"gateways must be 1..{len(hosts)}, not {gateways}")
    placed: list[tuple[str, Host, int]] = []
    port = FIRST_SERVICE_PORT
    for n, service in enumerate(SERVICES):
        for r in range(replicas):
            placed.append((service, hosts[(n + r) % len(hosts)], port))
            port += 1
    placed.append(("console", hosts[1 % len(hosts)], port))
    placed.extend(("gateway", hosts[g], GATEWAY_PORT) for g in range(gateways))
    return placed


def nats_config(node: int, hosts: Sequence[Host], lab: Hosts, store: Path, authorization: str) -> str:
    """Node `node`'s configuration: JetStream, the cluster through the route relays, the users."""
    routes = [
        f"nats-route://{lab.gateway}:{ROUTE_RELAY_BASE + 10 * node + peer}"
        for peer in range(NATS_NODES)
        if peer != node
    ]
    return "\n".join(
        [
            f"server_name: n{node + 1}",
            f"listen: {hosts[node].address}:{NATS_CLIENT_PORT}",
            f"http: {hosts[node].address}:{NATS_MONITOR_PORT}",
            f"jetstream {{ store_dir: {json.dumps(str(store))} }}",
            "cluster {",
            "  name: meshop-lab",
            f"  listen: 0.0.0.0:{NATS_ROUTE_PORT}",
            # Peers learn each other's route address from each other: an unreachable one,
            # so that every route goes through the relays that can partition it.
            "  advertise: 127.0.0.1:1",
            "  no_advertise: true",  # clients know the three servers from MESHOP_NATS_URL
            f"  routes: {json.dumps(routes)}",
            "}",
            authorization,
        ]
    )


#: Names of settings that hold a secret's value: the lab passes secrets as files only.
_SECRET_WORDS = ("PASSWORD", "SECRET", "TOKEN", "PRIVATE", "CREDENTIALS")


def check_settings(env: Mapping[str, str]) -> None:
    """Refuse settings that are not `MESHOP_*` or that carry a secret's value (lab.json records them)."""
    for key, value in env.items():
        if not key.startswith("MESHOP_"):
            raise ValueError(f"{key}: the lab passes only MESHOP_* settings to its processes")
        if any(word in key for word in _SECRET_WORDS) and not key.endswith(("_FILE", "_DIR")):
            raise ValueError(f"{key}: pass a secret as a file (…_FILE), not its value (lab.json records settings)")
        if "://" in value and any(urlsplit(part).password for part in value.split(",")):
            raise ValueError(f"{key}: a URL with a password; the lab's PostgreSQL trusts its subnet")


def _environment(own: Mapping[str, str]) -> dict[str, str]:
    """The caller's environment without its MESHOP_* settings, plus a process's own."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("MESHOP_")}, **own}


#: The processes this process started and has not seen end: kept, so that they are reaped
#: (no zombies while a chaos run restarts processes for minutes) and not warned about.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def _spawn(args: list[str], log: Path, env: Mapping[str, str] | None = None) -> int:
    with log.open("ab") as out:
        process = subprocess.Popen(
            args,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=_environment(env or {}),
            start_new_session=True,
        )
    _CHILDREN[process.pid] = process
    return process.pid


def _wait_http(url: str, deadline: float, pid: int) -> bool:
    """Whether `url` answers 200 before `deadline`; False at once if process `pid` ended."""
    while time.monotonic() < deadline and alive(pid):
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:  # noqa: S310 - the lab's own http URLs
                if resp.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    return False


def _wait_port(address: str, port: int, deadline: float) -> bool:
    import socket

    while time.monotonic() < deadline:
        try:
            socket.create_connection((address, port), timeout=0.5).close()
            return True
        except OSError:
            time.sleep(0.1)
    return False


def _postgres_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"))
    if not found:
        raise LabError("no PostgreSQL server binaries in /usr/lib/postgresql/*/bin (apt-get install postgresql)")
    return found[-1].parent


def postgres_init(pg_dir: Path, *, trusted: str) -> None:
    """A new PostgreSQL data directory in `pg_dir/data` (made afresh), trusting network `trusted`."""
    if pg_dir.exists():
        shutil.rmtree(pg_dir)
    pg_dir.mkdir(mode=0o700)
    shutil.chown(pg_dir, "postgres", "postgres")
    subprocess.run(
        ["runuser", "-u", "postgres", "--", str(_postgres_bin() / "initdb"), "-D", str(pg_dir / "data"),
         "-A", "trust", "-U", "postgres"],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    with (pg_dir / "data" / "pg_hba.conf").open("a") as hba:
        hba.write(f"host all all {trusted} trust\n")


def postgres_command(pg_dir: Path, address: str, port: int) -> list[str]:
    """The server of `postgres_init(pg_dir)` listening on `address:port`, run as the postgres user."""
    return [
        "runuser", "-u", "postgres", "--", str(_postgres_bin() / "postgres"), "-D", str(pg_dir / "data"),
        "-h", address, "-p", str(port), "-k", str(pg_dir), "-c", "max_connections=300",
    ]  # fmt: skip


def up(
    directory: Path = DEFAULT_DIR,
    *,
    hosts: int = 4,
    replicas: int = 2,
    gateways: int = 1,
    zones: Sequence[str] = ("a", "b"),
    env: Mapping[str, str] | None = None,
    timeout_s: float = 120.0,
    say: Callable[[str], None] = print,
) -> LabState:
    """Make the lab and start the shop on it; the state (also in DIR/lab.json) once every process is ready.

    `env`: more `MESHOP_*` settings for every meshop process (e.g. the chaos run's sweep
    interval); no secret values (they are recorded in lab.json).
    """
    check_settings(env or {})
    if hosts < NATS_NODES + 1:
        raise ValueError(f"the lab needs at least {NATS_NODES + 1} hosts (three NATS nodes, PostgreSQL apart)")
    if (directory / STATE_FILE).exists():
        raise LabError(f"a lab already runs from {directory} (`meshop lab down --dir {directory}` first)")
    directory = directory.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "logs").mkdir(exist_ok=True)
    lab = Hosts.create(hosts, zones=zones)
    state = LabState(lab.lab_id, str(directory), [asdict(h) for h in lab.hosts])
    state.save()
    try:
        _start(state, lab, directory, replicas=replicas, gateways=gateways, env=env or {}, timeout_s=timeout_s, say=say)
    except BaseException:
        down(directory, say=lambda _line: None)
        raise
    return state


def _start(
    state: LabState,
    lab: Hosts,
    directory: Path,
    *,
    replicas: int,
    gateways: int,
    env: Mapping[str, str],
    timeout_s: float,
    say: Callable[[str], None],
) -> None:
    deadline = time.monotonic() + timeout_s
    logs = directory / "logs"
    python = sys.executable
    # Secrets, as `meshop deploy secrets` makes them for a cluster: NATS users, identity,
    # scrape token, admin password.
    credentials = ensure_users(directory)
    authorization = render_server_config(credentials)
    provision(directory / "identity", PROCESSES)
    token_file = scrape_token.create(directory / scrape_token.FILENAME)
    admin_file = directory / "admin-password"
    if not admin_file.exists():
        fd = os.open(admin_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(18))

    def record(process: LabProcess) -> None:
        state.processes.append(process)
        state.save()

    def launch(process: LabProcess, argv: list[str], own: dict[str, str] | None = None) -> LabProcess:
        process.argv, process.env = argv, own or {}
        process.pid = _spawn(argv, Path(process.log), process.env)
        record(process)
        return process

    # NATS: relays for the routes first (a node dials its peers through them), then the nodes.
    nats_hosts = lab.hosts[:NATS_NODES]
    for i in range(NATS_NODES):
        for j in range(NATS_NODES):
            if i != j:
                port = ROUTE_RELAY_BASE + 10 * i + j
                route = f"{lab.gateway}:{port}={nats_hosts[j].address}:{NATS_ROUTE_PORT}"
                log = logs / f"relay-n{i + 1}-n{j + 1}.log"
                relay = LabProcess(f"relay-n{i + 1}-n{j + 1}", "relay", "lab", lab.gateway, port, log=str(log))
                launch(relay, [python, "-m", "meshop.lab.relay", f"--route={route}"])
    binary = str(find_binary())
    for i, host in enumerate(nats_hosts):
        store = directory / "nats" / f"n{i + 1}"
        store.mkdir(parents=True, exist_ok=True)
        config = directory / "nats" / f"n{i + 1}.conf"
        fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(nats_config(i, nats_hosts, lab, store, authorization))
        log = logs / f"nats-n{i + 1}.log"
        node = LabProcess(f"nats-n{i + 1}", "nats", host.name, host.address, NATS_CLIENT_PORT, log=str(log))
        node.zone = host.zone
        launch(node, [*host.exec_prefix, binary, "-c", str(config)])
    state.nats_url = ",".join(f"nats://{h.address}:{NATS_CLIENT_PORT}" for h in nats_hosts)
    state.save()
    (directory / "nats.url").write_text(state.nats_url + "\n")
    for host, node in zip(nats_hosts, state.processes[-NATS_NODES:], strict=True):
        # Healthy: JetStream's meta leader elected, streams can be made.
        if not _wait_http(f"http://{host.address}:{NATS_MONITOR_PORT}/healthz", deadline, node.pid):
            raise LabError(f"NATS on {host.name} did not become healthy (log: {logs}/nats-*.log)")
    say(f"lab | NATS cluster of {NATS_NODES} on {', '.join(h.name for h in nats_hosts)}: {state.nats_url}")

    # PostgreSQL on the last host, as the postgres user (initdb refuses root).
    db_host = lab.hosts[-1]
    pg_dir = Path(f"/tmp/meshop-lab-{lab.lab_id}-pg")  # noqa: S108 - the postgres user must reach it
    postgres_init(pg_dir, trusted=f"{lab.gateway.rsplit('.', 1)[0]}.0/24")
    log = logs / "postgres.log"
    database = LabProcess("postgres", "postgres", db_host.name, db_host.address, POSTGRES_PORT, log=str(log))
    database.zone = db_host.zone
    launch(database, [*db_host.exec_prefix, *postgres_command(pg_dir, db_host.address, POSTGRES_PORT)])
    if not _wait_port(db_host.address, POSTGRES_PORT, deadline):
        raise LabError(f"PostgreSQL on {db_host.name} did not listen (log: {log})")
    say(f"lab | PostgreSQL on {db_host.name} at {db_host.address}:{POSTGRES_PORT} ({pg_dir})")

    # The shop: `meshop run` per process, as in a container.
    meshop = str(Path(python).with_name("meshop"))
    started: list[LabProcess] = []
    counts: dict[str, int] = {}
    for process, host, port in plan(lab.hosts, replicas=replicas, gateways=gateways):
        counts[process] = counts.get(process, 0) + 1
        name = f"{process}-{counts[process]}"
        data = directory / "data" / name
        data.mkdir(parents=True, exist_ok=True)
        own = {
            **env,
            "MESHOP_DATA_DIR": str(data),
            "MESHOP_HOST": host.address,
            "MESHOP_PORT": str(port),
            "MESHOP_ADVERTISE_HOST": host.address,
            "MESHOP_ZONE": host.zone,
            "MESHOP_NATS_URL": state.nats_url,
            "MESHOP_NATS_REPLICAS": str(NATS_NODES),
            "MESHOP_NATS_CREDENTIALS_FILE": str(credentials_file(directory, process)),
            "MESHOP_IDENTITY_DIR": str(directory / "identity"),
            "MESHOP_DATABASE_URL": f"postgresql://postgres@{db_host.address}:{POSTGRES_PORT}",
            "MESHOP_METRICS_TOKEN_FILE": str(token_file),
            "MESHOP_METRICS_LOOPBACK": "false",
            "MESHOP_LOG_FORMAT": "json",
        }
        if process == "users":
            own["MESHOP_ADMIN_PASSWORD_FILE"] = str(admin_file)
        check_settings(own)
        log = logs / f"{name}.log"
        entry = LabProcess(name, "service", host.name, host.address, port, log=str(log), zone=host.zone)
        launch(entry, [*host.exec_prefix, meshop, "run", process, "--issue-identity"], own)
        started.append(entry)
        pid = entry.pid
        # The others verify tokens with the users service's keys: it comes up first.
        if process == "users" and not _wait_http(f"http://{host.address}:{port}/ready", deadline, pid):
            raise LabError(f"{name} on {host.name} did not become ready (log: {log})")
    for entry in started:
        if not _wait_http(f"http://{entry.address}:{entry.port}/ready", deadline, entry.pid):
            raise LabError(f"{entry.name} on {entry.host} did not become ready (log: {entry.log})")
    state.gateway_urls = [f"http://{p.address}:{p.port}" for p in started if p.name.startswith("gateway-")]
    state.save()
    (directory / "gateway.url").write_text(state.gateway_urls[0] + "\n")
    say(f"lab | the shop is at {', '.join(state.gateway_urls)}")


def restart(directory: Path, name: str) -> LabProcess:
    """Start process `name` again, stopped, as before: same command, settings and host; its new pid."""
    state = LabState.load(directory)
    process = state.process(name)
    if process.pid and alive(process.pid):
        raise LabError(f"{name} still runs (pid {process.pid}): stop it first")
    if process.kind == "postgres" and (left := server_processes(process)):
        raise LabError(f"{name}: processes of the old server still run ({left}): stop them first")
    if not process.argv:
        raise LabError(f"{name}: no command recorded (a lab made before `restart` existed)")
    process.pid = _spawn(process.argv, Path(process.log), process.env)
    state.save()
    return process


def kill(directory: Path, name: str, sig: signal.Signals = signal.SIGKILL) -> LabProcess:
    """Send `sig` to process `name` (its whole process group, as a container's stop does).

    PostgreSQL killed with SIGKILL: the postmaster's children too, as when the server's host
    or container dies. Each child of the postmaster is a session of its own (`setsid`), out
    of the group; left alive, a backend would hold the old server's shared memory, and the
    next postmaster refuses to start beside it.
    """
    process = LabState.load(directory).process(name)
    if process.pid and alive(process.pid):  # never a stranger that reused an old pid's number
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError:  # not a group leader of ours any more: the process itself
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, sig)
    if process.kind == "postgres" and sig == signal.SIGKILL:
        _kill_server(process)
    return process


def postgres_data(process: LabProcess) -> Path:
    """The data directory of the lab's PostgreSQL (`-D` in its recorded command)."""
    return Path(process.argv[process.argv.index("-D") + 1])


def server_processes(process: LabProcess) -> list[int]:
    """Every process of PostgreSQL `process` still running: the postmaster and its children.

    They are found by their working directory, the server's data directory (the postmaster
    changes to it at start, its children inherit it): after the postmaster dies, its
    children are no longer its children, and they are not in its process group.
    """
    data = postgres_data(process).resolve()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if Path(os.readlink(entry / "cwd")) == data and alive(int(entry.name)):
                    found.append(int(entry.name))
    return found


def _postmaster_exists(process: LabProcess) -> bool:
    """Whether the pid in `postmaster.pid` exists, even as a zombie: a new postmaster would not start."""
    try:
        pid = int((postgres_data(process) / "postmaster.pid").read_text().split("\n", 1)[0])
        os.kill(pid, 0)
    except (OSError, ValueError):  # no file (a clean stop), or no such process
        return False
    return True


def _kill_server(process: LabProcess, within_s: float = 10.0) -> None:
    """SIGKILL every process of PostgreSQL `process` until none is left (or raise).

    Then wait until the postmaster's pid is reaped as well (by init, its parent gone): a new
    postmaster checks that pid in the lock file `postmaster.pid` with `kill(pid, 0)`, which
    succeeds on a zombie, and refuses to start ("Is another postmaster running?").
    """
    deadline = time.monotonic() + within_s
    while (left := server_processes(process)) or _postmaster_exists(process):
        if time.monotonic() > deadline:
            raise LabError(f"{process.name}: processes {left} still run {within_s:g} s after SIGKILL")
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.02)


def alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie does not)."""
    child = _CHILDREN.get(pid)
    if child is not None:
        if child.poll() is None:
            return True
        del _CHILDREN[pid]
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie of ours is not alive
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


def status(directory: Path = DEFAULT_DIR) -> tuple[LabState, list[dict[str, str]]]:
    """The lab's state and one row per process: host, zone, address, pid, running or not."""
    state = LabState.load(directory)
    rows = [
        {
            "process": p.name,
            "host": p.host,
            "zone": p.zone or "-",
            "address": f"{p.address}:{p.port}",
            "pid": str(p.pid),
            "state": "running" if p.pid and alive(p.pid) else "exited",
        }
        for p in state.processes
    ]
    return state, rows


def down(directory: Path = DEFAULT_DIR, *, grace_s: float = 10.0, say: Callable[[str], None] = print) -> None:
    """Stop every process the lab recorded (services first, NATS and PostgreSQL last), then remove the hosts."""
    state = LabState.load(directory)
    order = {"service": 0, "relay": 1, "nats": 2, "postgres": 3}
    for kind in sorted(order, key=order.__getitem__):
        group = [p for p in state.processes if p.kind == kind and p.pid and alive(p.pid)]
        for p in group:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while any(alive(p.pid) for p in group) and time.monotonic() < deadline:
            time.sleep(0.1)
        for p in group:
            if alive(p.pid):
                say(f"lab | {p.name} (pid {p.pid}) did not stop within {grace_s:g} s: killed")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
    state.lab_hosts().destroy()
    shutil.rmtree(f"/tmp/meshop-lab-{state.lab_id}-pg", ignore_errors=True)  # noqa: S108
    for name in (STATE_FILE, "nats.url", "gateway.url"):
        (Path(state.directory) / name).unlink(missing_ok=True)
    say(f"lab | stopped {len(state.processes)} processes and removed lab {state.lab_id}'s hosts")
