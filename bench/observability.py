"""What tracing and metrics cost: checkout throughput with both on vs both off, one run.

Starts a shop with tracing and metrics on (spans of every hop published to NATS and
sampled at the tail by the console, RED metrics on every route and call) and one with
both off (`MESHOP_TRACING=false MESHOP_METRICS=false`: trace ids still propagate), in
alternating rounds so that drift on a shared machine hits both alike, drives the same
closed-loop checkout load through each, and prints throughput, p50/p99 and CPU per
checkout over every process of the shop. Target: tracing and metrics cost <= 10% of
checkout throughput.

    python bench/observability.py --clients 8 --duration 15 --rounds 2 [--smoke]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import signal
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp

from _common import add_smoke, pct, table
from checkout import SKUS, client, cpu_seconds, shop_processes, signup, start_shop, tally

MODES = {
    "on": {"MESHOP_TRACING": "true", "MESHOP_METRICS": "true"},
    "off": {"MESHOP_TRACING": "false", "MESHOP_METRICS": "false"},
}


async def drive(url: str, root_pid: int, clients: int, duration: float, warmup_s: float) -> dict[str, float]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        tokens = [await signup(session, url) for _ in range(clients)]
        skus = itertools.cycle(SKUS)
        warm = tally()
        await asyncio.gather(*(client(session, url, t, time.monotonic() + warmup_s, skus, warm) for t in tokens))
        processes = shop_processes(root_pid)
        cpu_before = cpu_seconds(processes)
        out = tally()
        started = time.monotonic()
        await asyncio.gather(*(client(session, url, t, started + duration, skus, out) for t in tokens))
        elapsed = time.monotonic() - started
        cpu = cpu_seconds(processes) - cpu_before
    latencies: list[float] = out["latencies"]  # type: ignore[assignment]
    return {
        "throughput": len(latencies) / elapsed,
        "p50_ms": pct(latencies, 0.5) * 1000,
        "p99_ms": pct(latencies, 0.99) * 1000,
        "cpu_ms": cpu / max(1, len(latencies)) * 1000,
        "errors": float(out["errors"]),  # type: ignore[arg-type]
    }


def one_round(mode: str, clients: int, duration: float, warmup_s: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix=f"meshop-obs-{mode}-") as tmp:
        process, url, _ = start_shop(Path(tmp), MODES[mode])
        try:
            return asyncio.run(drive(url, process.pid, clients, duration, warmup_s))
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--duration", type=float, default=15.0, help="measured seconds per round")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of (on, off)")
    add_smoke(parser)
    args = parser.parse_args()
    warmup_s = 2.0
    if args.smoke:  # one round of each mode, briefly
        args.clients, args.duration, args.rounds, warmup_s = 2, 1.0, 1, 0.5
    results: dict[str, list[dict[str, float]]] = {"on": [], "off": []}
    for n in range(args.rounds):
        for mode in ("on", "off") if n % 2 == 0 else ("off", "on"):
            result = one_round(mode, args.clients, args.duration, warmup_s)
            results[mode].append(result)
            print(f"round {n + 1} {mode:3}: {result['throughput']:.1f} checkouts/s, p50 {result['p50_ms']:.1f} ms")
    summary = {m: {k: statistics.fmean(r[k] for r in rs) for k in rs[0]} for m, rs in results.items()}
    rows = [(m, s["throughput"], s["p50_ms"], s["p99_ms"], s["cpu_ms"], s["errors"]) for m, s in summary.items()]
    table(
        f"checkout, {args.clients} clients, {args.rounds} x {args.duration:.0f} s per mode (means)",
        rows,
        ["tracing+metrics", "checkouts/s", "p50 ms", "p99 ms", "CPU ms/checkout", "errors"],
    )
    cost = 1 - summary["on"]["throughput"] / summary["off"]["throughput"]
    cpu = summary["on"]["cpu_ms"] / summary["off"]["cpu_ms"] - 1
    print(f"\nthroughput cost of tracing + metrics: {cost:.1%} (target <= 10%); CPU per checkout {cpu:+.1%}")


if __name__ == "__main__":
    main()
