"""The gateway's cost, next to nginx and to calling the backend directly, in one run.

    python bench/gateway.py [--duration 10] [--connections 64] [--baseline TREE]

A granian backend stands in for a service (it answers the catalog's `GET /products`) and
is registered in NATS like any instance. Then, with wrk (`apt-get install wrk nginx`):

- direct → backend;
- nginx → backend (the reference proxy: one worker, keep-alive upstream, no access log);
- meshop gateway → backend, (a) routing only (no auth, no limits, no access log, no
  spans) and (b) everything on, the row the targets are for: JWT verification of a real
  users-service token, per-user and per-route GCRA rate limits (set high enough not to
  refuse), tracing (W3C trace context continued, the gateway's and the call's spans
  recorded and published to NATS, decision 0011), the JSON access log; (c) is (b)
  without spans, to show what tracing costs. `--baseline TREE` serves one more (b) from
another source tree (`git archive HEAD src | tar -x -C TREE`): before and after in one run.

Backend and proxy share CPU 0 and wrk runs on CPU 1, so a proxy's CPU per request decides
its throughput. Reported: req/s and p50/p99 at N connections, the proxy's CPU µs per
request (its own process time over the run), the added p50 at 1 connection (seed 002's
direct call vs through a gateway), and ratios to nginx.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import nats
import psutil

from _common import table
from meshop.mesh.registry import Instance, NatsKvRegistry
from meshop.runtime.nats_server import EmbeddedNats, free_port

HERE = Path(__file__).resolve().parent
PROXY_CPU, WRK_CPU = {0}, {1}
ADMIN_PASSWORD = "bench-admin-password"


@dataclass
class Result:
    name: str
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us: float | None


def pin(pid: int, cpus: set[int]) -> None:
    with contextlib.suppress(OSError):
        for proc in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
            os.sched_setaffinity(proc.pid, cpus)


def cpu_seconds(pid: int | None) -> float:
    if pid is None:
        return 0.0
    total = 0.0
    for proc in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if match is None:
        raise ValueError(f"unexpected wrk latency {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def wrk(
    url: str, *, connections: int, duration_s: int, headers: dict[str, str], cpu_pid: int | None, name: str
) -> Result:
    args = ["wrk", "-t1", f"-c{connections}", f"-d{duration_s}s", "--latency"]
    for key, value in headers.items():
        args += ["-H", f"{key}: {value}"]
    before = cpu_seconds(cpu_pid)
    done = subprocess.run(
        ["taskset", "-c", ",".join(map(str, WRK_CPU)), *args, url],
        capture_output=True,
        text=True,
        timeout=duration_s + 30,
        check=True,
    )
    used = cpu_seconds(cpu_pid) - before
    out = done.stdout
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if bad or "Socket errors" in out:
        raise RuntimeError(f"{name}: errors during the run:\n{out}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    return Result(name, rps, p50, p99, used / requests * 1e6 if cpu_pid else None)


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


def start(args: list[str], env: dict[str, str], log: Path, cwd: Path | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        args, env=env, cwd=cwd, stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument(
        "--baseline",
        type=Path,
        help="a source tree (its src/ on PYTHONPATH) served as one more (b) gateway: before/after in one run",
    )
    opts = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="meshop-bench-gw-"))
    processes: list[subprocess.Popen[bytes]] = []
    nats_server = EmbeddedNats(work / "nats")
    nats_url = await nats_server.start()
    nc = await nats.connect(nats_url)
    registry = NatsKvRegistry(nc, servers=nats_url)
    await registry.start()
    env = {
        **os.environ,
        "MESHOP_NATS_URL": nats_url,
        "MESHOP_DATA_DIR": str(work),
        "MESHOP_ADMIN_PASSWORD": ADMIN_PASSWORD,
        "MESHOP_LOG_LEVEL": "warning",
        "MALLOC_ARENA_MAX": "2",
    }
    try:
        backend_port = free_port()
        backend = start(
            [
                sys.executable,
                "-m",
                "granian",
                "--interface",
                "asgi",
                "--host",
                "127.0.0.1",
                "--port",
                str(backend_port),
                "--workers",
                "1",
                "--loop",
                "uvloop",
                "--no-log",
                "gateway_backend:app",
            ],
            env,
            work / "backend.log",
            cwd=HERE,
        )
        processes.append(backend)
        await wait_http(f"http://127.0.0.1:{backend_port}/ready")
        instance = Instance(
            service="catalog", instance_id="bench-backend", address="127.0.0.1", port=backend_port, pid=backend.pid
        )
        await registry.register(instance)

        users = start([sys.executable, "-m", "meshop", "run", "users"], env, work / "users.log")
        processes.append(users)
        deadline = time.monotonic() + 60
        while not registry.instances("users"):
            if time.monotonic() > deadline:
                raise RuntimeError("users did not register")
            await asyncio.sleep(0.1)
        users_url = registry.instances("users")[0].url
        email = f"bench-{uuid.uuid4().hex[:8]}@example.com"
        async with aiohttp.ClientSession() as session:
            body = {"email": email, "password": "bench-password", "name": "Bench"}
            async with session.post(users_url + "/register", json=body) as resp:
                assert resp.status == 201, await resp.text()
            async with session.post(users_url + "/login", json=body) as resp:
                token = (await resp.json())["access_token"]

        routes_plain = work / "routes-plain.toml"
        routes_plain.write_text(
            '[limits]\nper_ip = "off"\nper_user = "off"\n[[routes]]\nprefix = "/api/catalog"\nservice = "catalog"\n'
        )
        routes_full = work / "routes-full.toml"
        routes_full.write_text(
            '[limits]\nper_ip = "1000000/s"\nper_user = "1000000/s"\n'
            '[[routes]]\nprefix = "/api/catalog"\nservice = "catalog"\nauth = "user"\nrate_limit = "1000000/s"\n'
        )
        gateways = {}
        modes = [
            ("plain", routes_plain, "0", "false"),
            ("full", routes_full, "1", "true"),
            ("nospans", routes_full, "1", "false"),
        ]
        if opts.baseline is not None:
            modes.append(("baseline", routes_full, "1", "true"))
        for mode, routes, access_log, spans in modes:
            port = free_port()
            gateway_env = {
                **env,
                "MESHOP_PORT": str(port),
                "MESHOP_INSTANCE_ID": f"bench-gw-{mode}",
                "MESHOP_GATEWAY_ROUTES_FILE": str(routes),
                "MESHOP_GATEWAY_ACCESS_LOG": access_log,
                "MESHOP_TRACING": spans,
                "MESHOP_LOG_LEVEL": "info",  # the access log is an info line
            }
            if mode == "baseline":
                source = str(opts.baseline.resolve() / "src")
                gateway_env["PYTHONPATH"] = os.pathsep.join(filter(None, [source, env.get("PYTHONPATH")]))
            process = start(
                [sys.executable, "-m", "meshop", "run", "gateway"], gateway_env, work / f"gateway-{mode}.log"
            )
            processes.append(process)
            gateways[mode] = (process, f"http://127.0.0.1:{port}")
        for _, url in gateways.values():
            await wait_http(url + "/ready")

        nginx_port = free_port()
        (work / "nginx.conf").write_text(
            f"""worker_processes 1;
daemon off;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  upstream backend {{ server 127.0.0.1:{backend_port}; keepalive 128; }}
  server {{
    listen 127.0.0.1:{nginx_port};
    location / {{ proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; }}
  }}
}}
"""
        )
        nginx = start(["nginx", "-c", str(work / "nginx.conf"), "-p", str(work)], env, work / "nginx.log")
        processes.append(nginx)
        await wait_http(f"http://127.0.0.1:{nginx_port}/ready")

        for process in processes:
            pin(process.pid, PROXY_CPU)
        auth = {"authorization": f"Bearer {token}"}
        targets = [
            ("direct -> backend", f"http://127.0.0.1:{backend_port}/products", {}, None),
            ("nginx -> backend", f"http://127.0.0.1:{nginx_port}/products", {}, nginx.pid),
            ("meshop (a) routing only", gateways["plain"][1] + "/api/catalog/products", {}, gateways["plain"][0].pid),
            (
                "meshop (b) JWT+limits+tracing+log",
                gateways["full"][1] + "/api/catalog/products",
                auth,
                gateways["full"][0].pid,
            ),
            (
                "meshop (c) = (b) without spans",
                gateways["nospans"][1] + "/api/catalog/products",
                auth,
                gateways["nospans"][0].pid,
            ),
        ]
        if opts.baseline is not None:
            process, url = gateways["baseline"]
            targets.append((f"(b) at {opts.baseline.name}", url + "/api/catalog/products", auth, process.pid))
        for name, url, headers, _ in targets:  # warm up every path (JWKS fetch, pools, caches)
            wrk(url, connections=8, duration_s=2, headers=headers, cpu_pid=None, name=name)
        loaded = [
            wrk(url, connections=opts.connections, duration_s=opts.duration, headers=headers, cpu_pid=pid, name=name)
            for name, url, headers, pid in targets
        ]
        single = [
            wrk(url, connections=1, duration_s=max(3, opts.duration // 2), headers=headers, cpu_pid=None, name=name)
            for name, url, headers, _ in targets
        ]
    finally:
        for process in reversed(processes):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        for process in processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(10)
        await registry.stop()
        await nc.close()
        await nats_server.stop()
        shutil.rmtree(work, ignore_errors=True)

    nginx_rps = loaded[1].rps
    table(
        f"{opts.connections} connections, {opts.duration}s each; backend and proxy on CPU 0, wrk on CPU 1",
        [
            (
                r.name,
                round(r.rps),
                r.p50_ms,
                r.p99_ms,
                "-" if r.cpu_us is None else round(r.cpu_us, 1),
                round(r.rps / nginx_rps, 2),
            )
            for r in loaded
        ],
        ["path", "req/s", "p50 ms", "p99 ms", "proxy CPU us/req", "x nginx req/s"],
    )
    direct_p50 = single[0].p50_ms
    table(
        "1 connection: latency a proxy adds (seed 002: a direct call vs one through a gateway)",
        [(r.name, r.p50_ms, r.p99_ms, round((r.p50_ms - direct_p50) * 1000)) for r in single],
        ["path", "p50 ms", "p99 ms", "added p50 us"],
    )
    run = loaded[3]
    print(
        f"targets, (b) everything on: <= 150 us gateway CPU per request -> {run.cpu_us:.0f} us; "
        f">= 0.45 x nginx req/s -> {run.rps / nginx_rps:.2f}; "
        f"<= 150 us added p50 unloaded -> {round((single[3].p50_ms - direct_p50) * 1000)} us"
    )
    print(f"spans cost {(run.cpu_us or 0) - (loaded[4].cpu_us or 0):.0f} us of gateway CPU per request ((b) - (c))")
    if opts.baseline is not None:
        base = loaded[5]
        print(
            f"(b) at {opts.baseline.name}, same run: {base.cpu_us:.0f} us gateway CPU per request; "
            f"{base.rps / nginx_rps:.2f} x nginx req/s; {round((single[5].p50_ms - direct_p50) * 1000)} us added p50"
        )


if __name__ == "__main__":
    for tool in ("wrk", "nginx", "taskset"):
        if shutil.which(tool) is None and shutil.which(tool, path="/usr/sbin") is None:
            sys.exit(f"{tool} is needed: apt-get install -y wrk nginx")
    asyncio.run(main())
