"""Unloaded latency only: what gateway (b) adds at one connection, against another tree's.

    python bench/gateway_latency.py --baseline TREE [--rounds 6] [--duration 3]
    python bench/gateway_latency.py --smoke [--baseline TREE]  # TREE: this one by default

`bench/gateway.py` measures everything in one run (~8 minutes) and its one-connection
rows get three rounds each. A change aimed at the unloaded latency needs more rounds of
fewer rows to be seen through this VM's noise: here the direct call, the floor
(bench/floor_proxy.py), gateway (b) — JWT, three rate limits, spans, the access log —
from this tree and from TREE (`git archive <commit> src | tar -x -C TREE`, compiled with
mypyc for a compiled baseline), rows interleaved, each round starting from the other end.
Both pinnings of `bench/gateway.py`: the proxies sharing the backend's core (CPU 0; wrk on
CPU 1), then each on a core of its own (CPU 1; backend and wrk on CPU 0). Reported: the
median p50 each adds to the direct call's in the same round, and in how many rounds (b)
from this tree added less than (b) from TREE.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
from pathlib import Path

from _common import add_smoke, table
from _rig import HERE, ROUTES_FULL, Rig, pin, wait_http
from gateway import PROXY_CPU, WRK_CPU, Result, wrk
from meshop.runtime.nats_server import free_port


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--baseline", type=Path, help="a source tree served as the other (b) (required but with --smoke)"
    )
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--duration", type=int, default=3, help="seconds per row per round")
    add_smoke(parser)
    opts = parser.parse_args()
    warm_s = 2  # wrk's seconds warming each path up (0: none)
    if opts.smoke:  # one round of a second per row, unwarmed; this tree against itself unless told otherwise
        opts.rounds, opts.duration, warm_s = 1, 1, 0
        opts.baseline = opts.baseline or HERE.parent
    elif opts.baseline is None:
        parser.error("--baseline TREE is required (e.g. `git archive <commit> src | tar -x -C TREE`)")
    async with Rig() as rig:
        auth = {"authorization": f"Bearer {rig.token}"}
        this, this_url = rig.gateway("full", ROUTES_FULL, access_log=True, spans=True)
        source = str(opts.baseline.resolve() / "src")
        base, base_url = rig.gateway(
            "baseline",
            ROUTES_FULL,
            access_log=True,
            spans=True,
            PYTHONPATH=os.pathsep.join(filter(None, [source, rig.env.get("PYTHONPATH")])),
        )
        floor_port = free_port()
        floor = rig.start(
            [sys.executable, str(HERE / "floor_proxy.py"), str(floor_port), f"http://127.0.0.1:{rig.backend_port}"],
            "floor.log",
        )
        rows = [
            ("direct -> backend", f"http://127.0.0.1:{rig.backend_port}/products", {}, None),
            ("floor: minimal Python proxy", f"http://127.0.0.1:{floor_port}/products", {}, floor.pid),
            ("meshop (b), this tree", this_url + "/api/catalog/products", auth, this.pid),
            (f"meshop (b) at {opts.baseline.name}", base_url + "/api/catalog/products", auth, base.pid),
        ]
        for url in (this_url, base_url, f"http://127.0.0.1:{floor_port}"):
            await wait_http(url + "/ready")
        for process in rig.processes:
            pin(process.pid, PROXY_CPU)
        for name, url, headers, _ in rows if warm_s else []:  # warm up (JWKS fetch, pools)
            wrk(url, connections=1, duration_s=warm_s, headers=headers, cpu_pid=None, name=name)
        proxies = [pid for _, _, _, pid in rows if pid is not None]
        for title, proxy_cpu, wrk_cpu in (
            ("proxies sharing the backend's core (CPU 0), wrk on CPU 1", PROXY_CPU, WRK_CPU),
            ("each proxy on a core of its own (CPU 1), backend and wrk on CPU 0", WRK_CPU, PROXY_CPU),
        ):
            for pid in proxies:
                pin(pid, proxy_cpu)
            rounds: list[list[Result]] = []
            for n in range(opts.rounds):
                order = rows if n % 2 == 0 else rows[::-1]
                done = {
                    name: wrk(
                        url,
                        connections=1,
                        duration_s=opts.duration,
                        headers=headers,
                        cpu_pid=pid,
                        name=name,
                        cpus=wrk_cpu,
                    )
                    for name, url, headers, pid in order
                }
                rounds.append([done[name] for name, _, _, _ in rows])
            added = [[(r[i].p50_ms - r[0].p50_ms) * 1000 for r in rounds] for i in range(len(rows))]
            cpu = [statistics.median(r[i].cpu_us or 0.0 for r in rounds) for i in range(len(rows))]
            table(
                f"1 connection, {title}: median of {opts.rounds} interleaved rounds of {opts.duration}s",
                [
                    (
                        name,
                        statistics.median(r[i].p50_ms for r in rounds),
                        round(statistics.median(added[i])),
                        "-" if pid is None else round(cpu[i]),
                        " ".join(str(round(a)) for a in added[i]),
                    )
                    for i, (name, _, _, pid) in enumerate(rows)
                ],
                ["path", "p50 ms", "added p50 us", "proxy CPU us/req", "added p50 per round"],
            )
            better = sum(a < b for a, b in zip(added[2], added[3], strict=True))
            print(f"(b) from this tree added less than at {opts.baseline.name} in {better} of {opts.rounds} rounds")
        for pid in proxies:
            pin(pid, PROXY_CPU)


if __name__ == "__main__":
    asyncio.run(main())
