"""Checkout benchmark: N concurrent clients buying through the gateway for a fixed time.

Starts its own `meshop up` (fresh data dir, free port) unless --url names a running shop.
For each client count it prints throughput, p50/p99 latency from the POST until the
order is CONFIRMED (not until the 202), errors, and CPU-seconds per checkout summed over
every meshop process (supervisor, NATS, services, gateway). The baseline, measured in
the same run, is a GET through the gateway to one service (a single round trip), so
the ratio says how many round trips' worth of time a whole checkout costs.

    python bench/checkout.py --clients 1 --clients 8 --duration 10 [--database postgres] [--smoke]

With `--baseline TREE` (a tree's path, or a commit-ish built once by bench/baseline_tree.py
into a cache dir under the system temp dir) it runs that tree's shop beside this tree's, in
one run, with the rounds interleaved (bench/_compare.py), and prints both sides and the
ratios new/baseline against issue 26's targets:

    python bench/checkout.py --baseline d424184 [--clients 1 --clients 8 --clients 16] --duration 10 [--json F]

`--database postgres` runs the shops on PostgreSQL (`--postgres`, default
postgresql://postgres@127.0.0.1:5432), each on fresh databases the run drops at its end.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import IO, Any

import aiohttp
import psutil

from _common import add_smoke
from _databases import DEFAULT_SERVER, BenchDatabases
from meshop.runtime.nats_server import free_port

ADDRESS = {"name": "Bench", "line1": "1 Loop", "city": "Local", "postal_code": "1", "country": "US"}
SKUS = [f"{prefix}-{n:03d}" for prefix in ("APP", "KIT", "ELE", "BOO", "OUT", "HOM") for n in range(1, 11)]


def _discard(stream: IO[bytes]) -> None:
    while stream.read(65536):
        pass


def start_shop(
    data_dir: Path, env: dict[str, str] | None = None, *, python: str = sys.executable
) -> tuple[subprocess.Popen[bytes], str, float]:
    """`PYTHON -m meshop up` on a free port (env: on top of this process's); it, its URL and seconds to ready."""
    port = free_port()
    started = time.monotonic()
    process = subprocess.Popen(
        [python, "-m", "meshop", "up", "--port", str(port), "--data-dir", str(data_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        # Every simulated customer comes from 127.0.0.1: the per-address limit would measure
        # itself; and one customer checking out back to back passes the per-user default (50/s).
        env={
            **os.environ,
            "MESHOP_GATEWAY_RATE_LIMIT_PER_IP": "off",
            "MESHOP_GATEWAY_RATE_LIMIT_PER_USER": "off",
            **(env or {}),
        },
    )
    assert process.stdout is not None
    for line in process.stdout:
        if b"the shop is at" in line:
            ready_s = time.monotonic() - started
            # keep draining output so the shop never blocks on a full pipe
            threading.Thread(target=_discard, args=(process.stdout,), daemon=True).start()
            return process, f"http://127.0.0.1:{port}", ready_s
    raise SystemExit("meshop up exited before it was ready")


def shop_processes(root_pid: int) -> list[psutil.Process]:
    root = psutil.Process(root_pid)
    return [root, *root.children(recursive=True)]


def cpu_seconds(processes: list[psutil.Process]) -> float:
    total = 0.0
    for p in processes:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def process_name(process: psutil.Process) -> str:
    """A shop process's name: its service's for a worker, "supervisor" for `meshop up`."""
    command = process.cmdline()
    if "meshop.runtime.worker" in command:
        return command[-1]
    if "up" in command and any("meshop" in part for part in command):
        return "supervisor"
    return process.name()


def cpu_by_process(processes: list[psutil.Process], before: dict[int, float]) -> dict[str, float]:
    result = {}
    for p in processes:
        try:
            name = process_name(p)
        except psutil.NoSuchProcess:
            continue
        result[name] = cpu_seconds([p]) - before.get(p.pid, 0.0)
    return dict(sorted(result.items(), key=lambda kv: -kv[1]))


async def signup(session: aiohttp.ClientSession, url: str) -> str:
    email = f"bench-{uuid.uuid4().hex[:12]}@example.com"
    body = {"email": email, "password": "benchmark-password", "name": "Bench"}
    status, answer = await _post(session, url + "/api/users/register", body)
    assert status == 201, answer
    status, answer = await _post(session, url + "/api/users/login", {"email": email, "password": body["password"]})
    assert status == 200, answer
    return str(answer["access_token"])


async def _post(session: aiohttp.ClientSession, url: str, body: object, attempts: int = 20) -> tuple[int, Any]:
    """POST `body`; a 429 (a shop that limits requests per address) is tried again when it says."""
    for _ in range(attempts):
        async with session.post(url, json=body) as resp:
            if resp.status != 429:
                return resp.status, await resp.json(content_type=None)
            await asyncio.sleep(float(resp.headers.get("retry-after", "0.1")))
    return 429, "still refused (429) after retrying"


async def baseline(session: aiohttp.ClientSession, url: str, seconds: float) -> list[float]:
    latencies = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        start = time.perf_counter()
        async with session.get(url + "/api/inventory/stock/APP-001") as resp:
            await resp.read()
        latencies.append(time.perf_counter() - start)
    return latencies


async def client(
    session: aiohttp.ClientSession,
    url: str,
    token: str,
    until: float,
    skus: itertools.cycle[str],
    out: dict[str, list[float] | int],
) -> None:
    headers = {"authorization": f"Bearer {token}"}
    while time.monotonic() < until:
        body = {
            "items": [{"sku": next(skus), "quantity": 1}],
            "payment": {"card_number": "4242424242424242", "exp_month": 12, "exp_year": 2031, "cvc": "123"},
            "shipping_address": {
                "name": "Bench",
                "line1": "1 Loop",
                "city": "Local",
                "postal_code": "1",
                "country": "US",
            },
        }
        start = time.perf_counter()
        async with session.post(
            url + "/api/orders", json=body, headers={**headers, "idempotency-key": uuid.uuid4().hex}
        ) as resp:
            if resp.status != 202:
                out["errors"] += 1  # type: ignore[operator]
                if resp.status == 429:
                    out["limited"] += 1  # type: ignore[operator]
                # As a client would: wait as told rather than spin on refusals.
                await asyncio.sleep(float(resp.headers.get("retry-after", "0.1")))
                continue
            order_id = (await resp.json())["id"]
        while True:  # long poll: the answer comes when the checkout ends
            async with session.get(f"{url}/api/orders/{order_id}?wait_s=8", headers=headers) as resp:
                if resp.status == 429:  # the order is placed: ask again when told, as a client would
                    out["limited"] += 1  # type: ignore[operator]
                    await asyncio.sleep(float(resp.headers.get("retry-after", "0.1")))
                    continue
                status = (await resp.json())["status"]
            if status != "PENDING":
                break
        if status == "CONFIRMED":
            out["latencies"].append(time.perf_counter() - start)  # type: ignore[union-attr]
        else:
            out["errors"] += 1  # type: ignore[operator]


def tally() -> dict[str, list[float] | int]:
    """What `client` counts: checkout latencies, errors, and requests a rate limit refused."""
    return {"latencies": [], "errors": 0, "limited": 0}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def run(
    url: str, root_pid: int | None, client_counts: list[int], duration: float, baseline_s: float = 2.0
) -> list[dict[str, float]]:
    results = []
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        base = await baseline(session, url, baseline_s)
        base_p50 = statistics.median(base)
        print(f"baseline: GET through the gateway p50 {base_p50 * 1000:.2f} ms over {len(base)} requests")
        for count in client_counts:
            tokens = [await signup(session, url) for _ in range(count)]
            processes = shop_processes(root_pid) if root_pid else []
            cpu_before = cpu_seconds(processes)
            cpu_before_each = {p.pid: cpu_seconds([p]) for p in processes}
            out = tally()
            skus = itertools.cycle(SKUS)
            started = time.monotonic()
            await asyncio.gather(*(client(session, url, t, started + duration, skus, out) for t in tokens))
            elapsed = time.monotonic() - started
            latencies: list[float] = out["latencies"]  # type: ignore[assignment]
            cpu = cpu_seconds(processes) - cpu_before if processes else float("nan")
            if processes and os.environ.get("BENCH_CPU_BREAKDOWN"):
                print(
                    "  CPU by process: "
                    + ", ".join(f"{n} {v:.1f}s" for n, v in cpu_by_process(processes, cpu_before_each).items())
                )
            row = {
                "clients": count,
                "checkouts": len(latencies),
                "throughput_per_s": len(latencies) / elapsed,
                "p50_ms": pct(latencies, 0.50) * 1000,
                "p99_ms": pct(latencies, 0.99) * 1000,
                "errors": float(out["errors"]),  # type: ignore[arg-type]
                "cpu_s_per_checkout": cpu / max(1, len(latencies)),
                "p50_vs_baseline": pct(latencies, 0.50) / base_p50,
            }
            results.append(row)
            print(
                f"clients {count:3d}: {row['checkouts']:6.0f} checkouts, {row['throughput_per_s']:7.1f}/s, "
                f"p50 {row['p50_ms']:6.1f} ms, p99 {row['p99_ms']:6.1f} ms, errors {row['errors']:.0f}, "
                f"CPU {row['cpu_s_per_checkout'] * 1000:5.1f} ms/checkout, p50 = {row['p50_vs_baseline']:.1f}x baseline"
            )
            if out["limited"]:
                print(
                    f"  {out['limited']} request(s) answered 429: the shop limits requests per address and user;"
                    " the shop this benchmark starts has MESHOP_GATEWAY_RATE_LIMIT_PER_IP/PER_USER=off"
                )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--clients",
        type=int,
        action="append",
        help="concurrent clients (repeatable; default 1 and 8, with --baseline 1, 8 and 16)",
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=10.0,
        help="measured seconds per client count (default 10; with --baseline per side, split over --rounds)",
    )
    parser.add_argument("--url", help="a running shop's gateway (default: start one)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--baseline", metavar="TREE", help="a tree's path or a commit-ish: compare its shop with this tree's"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        help="with --baseline: rounds per side and client count (default: an even number, of ~2.5 s each)",
    )
    parser.add_argument(
        "--warmup", type=float, default=1.0, help="with --baseline: unmeasured seconds before each round"
    )
    parser.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite", help="the shops' databases")
    parser.add_argument(
        "--postgres", default=DEFAULT_SERVER, help=f"with --database postgres: the server ({DEFAULT_SERVER})"
    )
    add_smoke(parser)
    args = parser.parse_args()
    postgres = args.postgres if args.database == "postgres" else None
    if args.baseline:
        from _compare import compare

        counts = args.clients or [1, 8, 16]
        if args.smoke:  # one client count, one round per side in each order, briefly
            counts, args.duration, args.rounds, args.warmup = counts[:1], 1.5, 2, 0.3
        # Short rounds, many: a burst of the machine's other work hits both sides alike.
        args.rounds = args.rounds or max(2, 2 * round(args.duration / 5))
        found = compare(
            args.baseline,
            counts=counts,
            seconds=args.duration / args.rounds,
            rounds=args.rounds,
            warmup_s=args.warmup,
            postgres_server=postgres,
        )
        if args.json:
            args.json.write_text(json.dumps(found, indent=2) + "\n")
        return
    counts = args.clients or [1, 8]
    baseline_s = 2.0
    if args.smoke:  # one client count, briefly
        counts, args.duration, baseline_s = counts[:1], 1.5, 0.5
    if args.url:
        results = asyncio.run(run(args.url, None, counts, args.duration, baseline_s))
    else:
        databases = BenchDatabases(postgres, "shop") if postgres else None
        with tempfile.TemporaryDirectory(prefix="meshop-bench-") as tmp:
            if databases is not None:
                print(f"PostgreSQL {asyncio.run(databases.check())}, databases {databases.prefix}*")
            process, url, ready_s = start_shop(Path(tmp), databases.env if databases else None)
            try:
                print(f"meshop up: ready in {ready_s:.1f}s at {url}")
                results = asyncio.run(run(url, process.pid, counts, args.duration, baseline_s))
                rss = {
                    " ".join(p.cmdline()[-1:]): p.memory_info().rss / 2**20
                    for p in shop_processes(process.pid)
                    if "meshop.runtime.worker" in " ".join(p.cmdline())
                }
                print("RSS per service process (MiB): " + ", ".join(f"{k} {v:.0f}" for k, v in sorted(rss.items())))
                print(f"max RSS {max(rss.values()):.0f} MiB (target <= 80)")
            finally:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(30)
                if databases is not None:
                    print(f"dropped {len(asyncio.run(databases.drop()))} databases")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
