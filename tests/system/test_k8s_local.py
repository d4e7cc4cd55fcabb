"""The `local` overlay's pod specs, run with podman itself (issue 23, "Run here").

`kubectl kustomize deploy/k8s/overlays/local` renders the objects; tests/system/podman_kube.py runs
every pod spec in them with podman (one podman pod per replica, on a network of this test's own),
honouring each field and refusing any it cannot honour. The test then: runs NATS (the StatefulSet),
the migration Job once, every Deployment; waits for their probes; completes a checkout through the
gateway container; scales catalog to 2 and removes the first catalog pod (preStop, SIGTERM, the
drain) under a steady GET load through the gateway with zero failed requests; stops everything and
checks that nothing with the test's label is left (pods, containers, volumes, network).

PostgreSQL and Redis: the overlay runs them from `docker.io/library/postgres` and `.../redis`,
which cannot be pulled here (no registry is reachable) and which meshop's image does not contain.
So those two Deployments are *external*: the test runs a private PostgreSQL (`initdb` into a
temporary directory, Debian's /usr/lib/postgresql binaries) and a private redis-server on the
host, both listening only on this test's bridge address, and the Services `postgres` and `redis`
resolve there. Every meshop pod spec (and NATS's) runs as rendered.

The Secrets are what `meshop deploy secrets --out DIR` writes (Secret manifests, read by the runner
like the rendered objects), with the database URL pointing at the Service `postgres`, whose user and
password (the Secret meshop-postgres) the host's PostgreSQL is given.
"""

from __future__ import annotations

import asyncio
import collections
import glob
import json
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from meshop.services import PROCESSES
from tests.system.image import build_image
from tests.system.podman_kube import Cluster, Pod, quantity

#: The run itself (network up to nothing left) must take at most this long; the test's timeout adds
#: the time to build the image when no earlier test of the session has (tests/system/test_image.py
#: does, in `make test-system`): 2 to 3.5 minutes on this machine, loaded.
RUN_S = 300
pytestmark = [pytest.mark.system, pytest.mark.timeout(RUN_S + 300)]

ROOT = Path(__file__).parents[2]
LOCAL = ROOT / "deploy" / "k8s" / "overlays" / "local"
#: Run on the host, not under podman (see the module's docstring): workload -> why.
EXTERNAL = {
    "postgres": "docker.io/library/postgres cannot be pulled: a private PostgreSQL on the host",
    "redis": "docker.io/library/redis cannot be pulled: a private redis-server on the host",
}
APPROVE = "4242424242424242"
#: Stopping: the gateway first (no new requests), then the other processes at once, NATS last.
STOP_ORDER = [["gateway"], [p for p in PROCESSES if p != "gateway"], ["nats"]]


def render(image: str) -> list[dict[str, Any]]:
    """The local overlay, with meshop's image replaced by the one just built (as `kustomize edit set image`)."""
    out = subprocess.run(["kubectl", "kustomize", str(LOCAL)], capture_output=True, text=True, check=True).stdout
    objects = [o for o in yaml.safe_load_all(out) if o]
    for obj in objects:
        pod = obj.get("spec", {}).get("template", {}).get("spec", {})
        for container in [*pod.get("initContainers", []), *pod.get("containers", [])]:
            if container["image"].split(":")[0] == "localhost/meshop":
                container["image"] = image
    return objects


def make_secrets(out: Path) -> list[dict[str, Any]]:
    """The Secrets as an operator makes them: `meshop deploy secrets` (manifests, one per file)."""
    subprocess.run(
        [sys.executable, "-m", "meshop", "deploy", "secrets", "--out", str(out), "--namespace", "meshop"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return [yaml.safe_load(path.read_text()) for path in sorted(out.glob("*.yaml"))]


class HostPostgres:
    """A private PostgreSQL on the host, listening on one address (the bridge's) only."""

    def __init__(self, address: str, user: str, password: str, port: int = 5432) -> None:
        self.address, self.user, self.password, self.port = address, user, password, port
        self.root = Path(tempfile.mkdtemp(prefix="meshop-pg-"))
        self.bin = Path(sorted(glob.glob("/usr/lib/postgresql/*/bin"))[-1])
        postgres = pwd.getpwnam("postgres")
        os.chown(self.root, postgres.pw_uid, postgres.pw_gid)

    def _as_postgres(self, *argv: str) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", *argv], check=True, capture_output=True, timeout=60)

    def start(self, subnet: str) -> None:
        data, sock = self.root / "data", self.root / "sock"
        self._as_postgres(str(self.bin / "initdb"), "-D", str(data), "-U", "postgres", "--auth-local=trust")
        with open(data / "pg_hba.conf", "a") as hba:
            hba.write(f"host all all {subnet} scram-sha-256\n")
        self._as_postgres("mkdir", "-m", "0700", str(sock))
        options = f"-c listen_addresses={self.address} -c port={self.port} -c unix_socket_directories={sock}"
        self._as_postgres(
            str(self.bin / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(self.root / "log"), "-w", "start"
        )
        sql = f"CREATE ROLE {self.user} LOGIN CREATEDB PASSWORD '{self.password}'"
        self._as_postgres(str(self.bin / "psql"), "-h", str(sock), "-p", str(self.port), "-U", "postgres", "-c", sql)

    def databases(self) -> set[str]:
        out = subprocess.run(
            ["runuser", "-u", "postgres", "--", str(self.bin / "psql"), "-h", str(self.root / "sock"),
             "-p", str(self.port), "-U", "postgres", "-Atc", "SELECT datname FROM pg_database"],
            capture_output=True, text=True, check=True, timeout=30,
        )  # fmt: skip
        return set(out.stdout.split())

    def stop(self) -> None:
        if (self.root / "data" / "postmaster.pid").exists():
            self._as_postgres(str(self.bin / "pg_ctl"), "-D", str(self.root / "data"), "-m", "fast", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """The rendered local overlay and its Secrets, ready to run; everything it made is removed afterwards, checked."""
    image = build_image()  # skips (fails under CI) without podman or the base image
    for tool in ("kubectl", "redis-server", "redis-cli", "runuser"):
        if not shutil.which(tool):
            (pytest.fail if os.environ.get("CI") else pytest.skip)(f"{tool} is not installed")
    if not glob.glob("/usr/lib/postgresql/*/bin/initdb"):
        (pytest.fail if os.environ.get("CI") else pytest.skip)("no PostgreSQL server binaries in /usr/lib/postgresql")
    c = Cluster(
        [*render(image), *make_secrets(tmp_path / "secrets")],
        secrets={},
        state_dir=tmp_path / "state",
        external=dict.fromkeys(EXTERNAL, ""),  # the addresses: the bridge's, once the network exists
    )
    try:
        yield c
    finally:
        c.down(STOP_ORDER)
        assert c.leftovers() == [], "left behind"


def listening(host: str, port: int, within_s: float) -> None:
    deadline = time.monotonic() + within_s
    while True:
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            assert time.monotonic() < deadline, f"nothing listens on {host}:{port}"
            time.sleep(0.1)


async def check_out(url: str) -> dict[str, Any]:
    """Register, log in, browse, order and wait for the order's end, all through the gateway."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        email = f"{uuid.uuid4().hex[:10]}@example.com"
        async with session.post(
            url + "/api/users/register", json={"email": email, "password": "correct horse", "name": "Ada"}
        ) as resp:
            assert resp.status == 201, await resp.text()
        async with session.post(url + "/api/users/login", json={"email": email, "password": "correct horse"}) as resp:
            assert resp.status == 200, await resp.text()
            headers = {"authorization": f"Bearer {(await resp.json())['access_token']}"}
        async with session.get(url + "/api/catalog/products?q=skillet") as resp:
            assert resp.status == 200, await resp.text()
            [product] = (await resp.json())["items"]
        body = {
            "items": [{"sku": product["sku"], "quantity": 1}],
            "payment": {"card_number": APPROVE, "exp_month": 12, "exp_year": 2031, "cvc": "123"},
            "shipping_address": {
                "name": "Ada",
                "line1": "1 Loop Road",
                "city": "Springfield",
                "postal_code": "12345",
                "country": "US",
            },
        }
        async with session.post(
            url + "/api/orders", json=body, headers={**headers, "idempotency-key": uuid.uuid4().hex}
        ) as resp:
            assert resp.status == 202, await resp.text()
            order_id = (await resp.json())["id"]
        deadline = time.monotonic() + 30
        while True:
            async with session.get(f"{url}/api/orders/{order_id}?wait_s=5", headers=headers) as resp:
                assert resp.status == 200, await resp.text()
                order: dict[str, Any] = await resp.json()
            if order["status"] != "PENDING" or time.monotonic() > deadline:
                return order


async def steady_gets(url: str, stop: asyncio.Event, clients: int = 8, rate: float = 60.0) -> tuple[int, list[str]]:
    """GET /api/catalog/products through the gateway from `clients` loops, `rate` requests/s in all
    (under the gateway's per-address limit, 100/s: every request comes from the bridge's address)."""
    done, failed = 0, []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:

        async def loop(offset: int) -> None:
            nonlocal done
            n = 0
            while not stop.is_set():
                try:
                    async with session.get(f"{url}/api/catalog/products?limit={1 + (offset + n) % 10}") as resp:
                        text = await resp.text()
                        if resp.status != 200:
                            failed.append(f"{resp.status}: {text[:200]}")
                except (aiohttp.ClientError, TimeoutError) as exc:
                    failed.append(repr(exc))
                done += 1
                n += clients
                await asyncio.sleep(clients / rate)

        await asyncio.gather(*(loop(i) for i in range(clients)))
    return done, failed


def test_the_local_overlay_runs_under_podman(cluster: Cluster) -> None:
    timings: dict[str, Any] = {}
    began = time.monotonic()

    def lap(name: str) -> None:
        timings[name] = round(time.monotonic() - began, 1)

    cluster.create_network()
    bridge = cluster.gateway_ip()
    for name in EXTERNAL:
        cluster.external[name] = bridge
    nats = cluster.start("nats")  # its pod brings the bridge up: the host's servers can listen on it now
    # As the postgres pod would: its superuser from the Secret meshop-postgres, which meshop-database's URL names.
    account = cluster.secrets["meshop-postgres"]
    postgres = HostPostgres(bridge, account["user"].decode(), account["password"].decode())
    redis = None
    try:
        postgres.start(str(cluster.subnet))
        redis = subprocess.Popen(
            ["redis-server", "--bind", bridge, "--port", "6379", "--save", "", "--appendonly", "no",
             "--protected-mode", "no", "--maxmemory", "48mb", "--maxmemory-policy", "volatile-ttl"],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        listening(bridge, 6379, within_s=10)
        cluster.wait_ready(nats, timeout=60)
        lap("nats ready")

        cluster.run_job("meshop-migrate")
        lap("migrations done")

        deployments = [n for n, w in cluster.workloads.items() if w.kind == "Deployment" and n not in EXTERNAL]
        assert sorted(deployments) == sorted(PROCESSES)
        pods = cluster.start_all(deployments)
        cluster.wait_ready(pods, timeout=150)
        lap("every process ready")

        for pod in pods:  # every meshop process, as it runs
            limits = pod.spec["containers"][0]["resources"]["limits"]
            assert hardening(pod) == {
                "uid": 1000, "gid": 1000, "groups": [1000],
                "root writable": False, "venv writable": False, "tmp writable": True, "data writable": True,
                "secret writable": False, "no new privs": "1", "effective caps": "0000000000000000",
                "token mode": "0o440", "token gid": 1000,
                "memory limit": quantity(limits["memory"]), "cpu limit": quantity(limits["cpu"]),
            }, pod.name  # fmt: skip
        lap("every process checked from inside")

        # The Job and the processes use PostgreSQL (the URL from the Secret), not a SQLite file each.
        with_database = {
            name
            for name, w in cluster.workloads.items()
            if any(v.get("secret", {}).get("secretName") == "meshop-database" for v in w.spec.get("volumes", []))
        }
        assert {f"meshop_{p}" for p in with_database & set(PROCESSES)} <= postgres.databases()

        [gateway] = cluster.pods_of("gateway")
        url = f"http://{gateway.ip}:8080"
        order = asyncio.run(check_out(url))
        assert order["status"] == "CONFIRMED", order
        lap("checkout confirmed")

        [first] = cluster.pods_of("catalog")
        [second] = cluster.scale("catalog", 2)
        cluster.wait_ready([second], timeout=60)
        asyncio.run(until_picked(url, cluster.secrets["meshop-scrape"]["token"].decode(), second.name))
        lap("catalog scaled to 2")
        removal, picks, (requests, failed) = asyncio.run(remove_under_load(cluster, first, url))
        lap("catalog pod removed under load")
        print(f"removing {first.name} took {removal:.1f}s; {requests} GETs through the gateway, {len(failed)} failed")
        print(f"the gateway's requests per catalog instance before the removal: {picks}")
        assert min(picks.get(first.name, 0), picks.get(second.name, 0)) > 0, picks  # both served the load
        assert requests > 100
        # The gateway's rate limits went through the shared Redis (its GCRA script, once per request at least).
        stats = subprocess.run(
            ["redis-cli", "-h", bridge, "-p", "6379", "info", "stats"], capture_output=True, text=True, check=True
        ).stdout
        commands = int(re.search(r"total_commands_processed:(\d+)", stats).group(1))  # type: ignore[union-attr]
        print(f"redis: {commands} commands")
        assert commands >= requests
        assert failed == []
        assert first.name not in cluster.pods
        assert first.exit_codes == {"meshop": 0}  # drained and exited within the grace period, not killed
        pre_stop = first.spec["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"]
        assert removal >= pre_stop  # SIGTERM only after the preStop hook
        restarted = {p.name: (cluster.restarts(p), p.events) for p in cluster.running() if cluster.restarts(p)}
        assert restarted == {}  # no container exited or failed a liveness probe
    finally:
        stopping = time.monotonic()
        stages = cluster.down(STOP_ORDER)
        timings["stopped (s)"] = round(time.monotonic() - stopping, 1)
        timings["stop stages: others, gateway, processes, NATS (s)"] = stages
        if redis is not None:
            redis.terminate()
            redis.wait(10)
        postgres.stop()
        timings["run (s)"] = round(time.monotonic() - began, 1)
        print("timings:", json.dumps(timings))
        kinds = collections.Counter(name.split("/")[0] for name in cluster.not_run)
        print("not run:", ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items())))
    assert timings["run (s)"] <= RUN_S


async def remove_under_load(
    cluster: Cluster, pod: Pod, url: str
) -> tuple[float, dict[str, float], tuple[int, list[str]]]:
    """Delete `pod` 2 s into a steady GET load; the gateway's requests per catalog instance just before."""
    stop = asyncio.Event()
    load = asyncio.create_task(steady_gets(url, stop))
    await asyncio.sleep(2)
    picks = await catalog_picks(url, cluster.secrets["meshop-scrape"]["token"].decode())
    removal = await asyncio.to_thread(cluster.delete_pod, pod)
    await asyncio.sleep(2)
    stop.set()
    return removal, picks, await load


async def until_picked(url: str, token: str, name: str, within_s: float = 30.0) -> None:
    """Until the gateway has sent a request to catalog instance `name` (its registry watch saw it)."""
    deadline = time.monotonic() + within_s
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        while (await catalog_picks(url, token)).get(name, 0) == 0:
            assert time.monotonic() < deadline, f"the gateway sent nothing to {name} within {within_s:g} s"
            async with session.get(f"{url}/api/catalog/products?limit=1") as resp:
                await resp.read()
            await asyncio.sleep(0.05)


async def catalog_picks(url: str, token: str) -> dict[str, float]:
    """The gateway's requests sent per catalog instance (meshop_balancer_picks), read with the scrape token."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(url + "/metrics", headers={"authorization": f"Bearer {token}"}) as resp,
    ):
        assert resp.status == 200, await resp.text()
        text = await resp.text()
    picks = {}
    for line in text.splitlines():
        found = re.match(r'meshop_balancer_picks\{(?=[^}]*target="catalog")[^}]*instance="([^"]+)"[^}]*\} (\S+)', line)
        if found:
            picks[found.group(1)] = float(found.group(2))
    return picks


#: Run in a meshop container: who it runs as, what it may write, its capabilities and a Secret file's mode.
HARDENING = """
import json, os, stat
def writable(path):
    try:
        with open(os.path.join(path, ".probe"), "w"):
            pass
        os.remove(os.path.join(path, ".probe"))
        return True
    except OSError:
        return False
def cgroup(name):  # cgroup v1, as on this machine (podman info: cgroupfs, v1)
    with open("/sys/fs/cgroup/" + name) as f:
        return int(f.read())
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
token = os.stat("/etc/meshop/scrape/token")
print(json.dumps({
    "uid": os.getuid(), "gid": os.getgid(), "groups": sorted(os.getgroups()),
    "root writable": writable("/"), "venv writable": writable("/opt/meshop"),
    "tmp writable": writable("/tmp"), "data writable": writable("/var/lib/meshop"),
    "secret writable": writable("/etc/meshop/scrape"),
    "no new privs": status["NoNewPrivs"].strip(), "effective caps": status["CapEff"].strip(),
    "token mode": oct(stat.S_IMODE(token.st_mode)), "token gid": token.st_gid,
    "memory limit": cgroup("memory/memory.limit_in_bytes"),
    "cpu limit": cgroup("cpu/cpu.cfs_quota_us") / cgroup("cpu/cpu.cfs_period_us"),
}))
"""


def hardening(pod: Pod) -> dict[str, Any]:
    out = subprocess.run(
        ["podman", "exec", pod.containers["meshop"], "/opt/meshop/bin/python", "-c", HARDENING],
        capture_output=True, text=True, check=True, timeout=30,
    )  # fmt: skip
    result: dict[str, Any] = json.loads(out.stdout)
    return result
