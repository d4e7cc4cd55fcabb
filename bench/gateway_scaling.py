"""What a second gateway process buys on this machine, next to a second nginx worker.

    python bench/gateway_scaling.py [--duration 8] [--rounds 3] [--connections 64] [--smoke]

One meshop gateway is one event loop: one core. `meshop up --replicas gateway=N` runs N
of them on one port (SO_REUSEPORT). This measures gateway (b) — everything on, as in
bench/gateway.py — as one process and as two replicas sharing a port, and nginx with one
worker and with two, in front of the same granian backend (two workers, so that the
backend is not what limits). Nothing is pinned: the proxies, the backend and wrk share
the machine's cores, as they would on one box. Rows are interleaved over `--rounds`,
medians reported; CPU per request is the proxy processes' own CPU time over the run.
"""

from __future__ import annotations

import argparse
import asyncio
from dataclasses import dataclass, replace

from _common import add_smoke, table
from _rig import ROUTES_FULL, Rig, cpu_seconds, wait_http
from gateway import Result, median_rows, ratio, wrk
from meshop.runtime.nats_server import free_port

ALL_CPUS = {0, 1}


@dataclass
class Row:
    name: str
    url: str
    headers: dict[str, str]
    pids: list[int]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=8)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    add_smoke(parser)
    opts = parser.parse_args()
    warm_s = 2  # wrk's seconds warming each path up (0: none)
    if opts.smoke:  # one round of a second per row, unwarmed
        opts.rounds, opts.duration, warm_s = 1, 1, 0
    async with Rig(backend_workers=2) as rig:
        auth = {"authorization": f"Bearer {rig.token}"}
        one, one_url = rig.gateway("one", ROUTES_FULL, access_log=True, spans=True)
        shared = free_port()
        replicas = [
            rig.gateway(f"replica-{n}", ROUTES_FULL, access_log=True, spans=True, port=shared, MESHOP_REUSE_PORT="1")
            for n in (1, 2)
        ]
        nginx_1, nginx_1_url = rig.nginx(workers=1)
        nginx_2, nginx_2_url = rig.nginx(workers=2)
        for url in (one_url, replicas[0][1], nginx_1_url, nginx_2_url):
            await wait_http(url + "/ready")
        path = "/api/catalog/products"
        rows = [
            Row("nginx, 1 worker", nginx_1_url + "/products", {}, [nginx_1.pid]),
            Row("nginx, 2 workers", nginx_2_url + "/products", {}, [nginx_2.pid]),
            Row("meshop (b), 1 process", one_url + path, auth, [one.pid]),
            Row("meshop (b), 2 replicas on one port", replicas[0][1] + path, auth, [p.pid for p, _ in replicas]),
        ]
        for r in rows if warm_s else []:  # warm up every path (JWKS fetch, pools, both replicas)
            wrk(r.url, connections=16, duration_s=warm_s, headers=r.headers, cpu_pid=None, name=r.name, cpus=ALL_CPUS)
        rounds: list[list[Result]] = []
        for _ in range(opts.rounds):
            rounds.append([])
            for r in rows:
                before = sum(cpu_seconds(pid) for pid in r.pids)
                result = wrk(
                    r.url,
                    connections=opts.connections,
                    duration_s=opts.duration,
                    headers=r.headers,
                    cpu_pid=None,
                    name=r.name,
                    cpus=ALL_CPUS,
                )
                used = sum(cpu_seconds(pid) for pid in r.pids) - before  # every process of the row
                rounds[-1].append(replace(result, cpu_us=used / (result.rps * opts.duration) * 1e6))

    table(
        f"{opts.connections} connections, {opts.duration}s each, median of {opts.rounds} interleaved rounds; "
        "nothing pinned (2 cores shared by proxy, backend and wrk)",
        [(r.name, round(r.rps), r.p50_ms, r.p99_ms, round(r.cpu_us or 0.0, 1)) for r in median_rows(rounds)],
        ["path", "req/s", "p50 ms", "p99 ms", "proxy CPU us/req"],
    )
    print(
        f"a second process: nginx x{ratio(rounds, 1, to=0):.2f} req/s, "
        f"meshop gateway x{ratio(rounds, 3, to=2):.2f} req/s"
    )


if __name__ == "__main__":
    asyncio.run(main())
