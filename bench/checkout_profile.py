"""Where one checkout's CPU goes: by process and by stage, sampled under load (issue 26, "See it").

    python bench/checkout_profile.py [--clients 8] [--duration 20] [--pure] [--database postgres] [--smoke]

Starts its own `meshop up`, runs `bench/checkout.py`'s customers for `--duration` seconds
and meanwhile, for every Python process of the shop, records its stacks with py-spy (a
sampling profiler: `--rate` samples per second of each process's CPU, idle time left out)
and its CPU time. CPU per checkout by process is measured; its split into stages is each
process's share of samples in that stage:

  server       the HTTP server, routing, validation (transport/server, api/, httptools, starlette)
  handler      the services' own code (services/, contracts/)
  database     SQLAlchemy, aiosqlite, asyncpg and the mesh's data layer
  client       the mesh client's chain and its HTTP pool (client/, transport/http_client, resilience/)
  nats         nats-py (its asyncio stream included), the NATS transport, the registry's heartbeats
  outbox       the outbox relay (publishing committed events)
  consumers    event consumers (users' order stats)
  saga         the saga orchestrator and its log
  long poll    orders' long-polling GET (`Settlements.wait`), the database reads in it included
  spans        tracing (spans, the batcher that sends them), trace context
  metrics      Prometheus metrics (RED counters, /metrics)
  logs         structlog and logging (the gateway's access log included)
  gateway      the gateway's pipeline (gateway/)
  event loop   asyncio and uvloop themselves
  other        anything else

A sample belongs to the innermost frame a stage claims, except that the outbox relay, the
consumers, the long poll and the span batcher claim every sample under them. The compiled
build's compiled modules have no Python frames: their time shows in the nearest
interpreted caller (for the gateway, mostly "event loop"). `--pure` runs the shop from a
copy of the sources without the C extensions, where every stage has its frames: the
split to read, at the pure build's (higher) cost. nats-server is measured, not sampled;
so is PostgreSQL with `--database postgres` (the server backends serving the shop's fresh
databases, as `bench/checkout.py --database postgres` runs them, one column "postgres").
Needs py-spy (a dev dependency) and the right to trace the shop's processes (root, or
ptrace_scope 0).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import itertools
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import psutil

from _common import add_smoke, table
from _databases import DEFAULT_SERVER, BenchDatabases
from checkout import SKUS, client, cpu_seconds, process_name, shop_processes, signup, start_shop, tally

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"

#: Stages that claim every sample under them, wherever in the stack (checked first, root first).
CONTEXTS: tuple[tuple[str, str], ...] = (
    ("Settlements.wait", "long poll"),
    ("meshop/mesh/events/outbox", "outbox"),
    ("meshop/mesh/events/consumer", "consumers"),
    ("SpanBatcher", "spans"),
    ("check_health", "client"),
)
#: Stages by the innermost frame they claim (checked leaf first).
RULES: tuple[tuple[str, str], ...] = (
    ("sqlalchemy/", "database"),
    ("aiosqlite/", "database"),
    ("asyncpg/", "database"),
    ("sqlite3/", "database"),
    ("meshop/mesh/data/", "database"),
    ("meshop/mesh/saga/", "saga"),
    ("meshop/mesh/telemetry/tracing", "spans"),
    ("meshop/mesh/telemetry/spanrecord", "spans"),
    ("meshop/mesh/telemetry/tracecontext", "spans"),
    ("prometheus_client/", "metrics"),
    ("meshop/mesh/telemetry/metrics", "metrics"),
    ("meshop/mesh/client/metrics", "metrics"),
    ("structlog/", "logs"),
    ("logging/", "logs"),
    ("meshop/mesh/telemetry/logs", "logs"),
    ("meshop/gateway/accesslog", "logs"),
    ("meshop/mesh/client/", "client"),
    ("meshop/mesh/transport/http_client", "client"),
    ("meshop/mesh/transport/exchange", "client"),
    ("meshop/mesh/resilience/", "client"),
    ("nats/", "nats"),
    ("meshop/mesh/transport/nats", "nats"),
    ("meshop/mesh/registry/", "nats"),
    ("meshop/mesh/jetstream", "nats"),
    ("meshop/mesh/events/", "outbox"),
    ("meshop/mesh/transport/server", "server"),
    ("meshop/mesh/api/", "server"),
    ("meshop/mesh/security/", "server"),
    ("starlette/", "server"),
    ("httptools/", "server"),
    ("meshop/gateway/", "gateway"),
    ("meshop/services/", "handler"),
    ("meshop/contracts/", "handler"),
    ("meshop/mesh/service/", "handler"),
    ("asyncio/streams.py", "nats"),  # nats-py's connection (the services' HTTP uses protocols)
    ("asyncio/", "event loop"),
    ("uvloop/", "event loop"),
)
STAGES = [
    "server",
    "handler",
    "database",
    "client",
    "nats",
    "outbox",
    "consumers",
    "saga",
    "long poll",
    "spans",
    "metrics",
    "logs",
    "gateway",
    "event loop",
    "other",
]
_FRAME = re.compile(r"(.*) \((.*):\d+\)$")


def stage_of(stack: list[str]) -> str:
    """The stage of one sampled stack (frames root first, as py-spy writes them)."""
    for frame in stack:
        for marker, stage in CONTEXTS:
            if marker in frame:
                return stage
    for frame in reversed(stack):
        for marker, stage in RULES:
            if marker in frame:
                return stage
    return "other"


def read_samples(path: Path) -> tuple[collections.Counter[str], collections.Counter[str]]:
    """Samples by stage and by leaf function, from py-spy's raw (collapsed) output."""
    stages: collections.Counter[str] = collections.Counter()
    leaves: collections.Counter[str] = collections.Counter()
    if not path.exists():
        return stages, leaves
    for line in path.read_text().splitlines():
        stack_text, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        stack = [f for f in stack_text.split(";") if f and not f.startswith("process ") and not f.startswith("thread ")]
        count = int(count_text)
        stages[stage_of(stack)] += count
        if stack:
            found = _FRAME.match(stack[-1])
            leaves[f"{found.group(1)} ({found.group(2)})" if found else stack[-1]] += count
    return stages, leaves


def pure_tree(work: Path) -> Path:
    """A copy of the sources without the C extensions: the shop runs them interpreted."""
    target = work / "pure-src"
    shutil.copytree(SRC, target, ignore=shutil.ignore_patterns("*.so", "build", "__pycache__", ".mypy_cache"))
    return target


def start_spies(
    processes: list[psutil.Process], duration: float, rate: int, work: Path
) -> dict[int, subprocess.Popen[bytes]]:
    """A py-spy recording `duration` seconds of each process (`<work>/<pid>.raw`), started now."""
    py_spy = str(Path(sys.executable).parent / "py-spy")
    return {
        p.pid: subprocess.Popen(
            [
                *(py_spy, "record", "--pid", str(p.pid), "--duration", str(int(duration)), "--rate", str(rate)),
                *("--nonblocking", "--format", "raw", "--output", str(work / f"{p.pid}.raw")),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for p in processes
    }


async def profile(
    url: str, root_pid: int, clients: int, duration: float, rate: int, work: Path, databases: BenchDatabases | None
) -> None:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        tokens = [await signup(session, url) for _ in range(clients)]
        skus = itertools.cycle(SKUS)
        warm = tally()
        until = time.monotonic() + min(3.0, duration / 2)
        await asyncio.gather(*(client(session, url, t, until, skus, warm) for t in tokens))

        processes = shop_processes(root_pid)
        names = {p.pid: process_name(p) for p in processes}
        python = [p for p in processes if Path(p.cmdline()[0]).name.startswith("python")]
        if databases is not None:  # the shop's PostgreSQL backends: measured, not sampled
            backends = [psutil.Process(pid) for pid in await databases.backend_pids()]
            processes += backends
            names.update({p.pid: "postgres" for p in backends})
        spies = start_spies(python, duration, rate, work)
        before = {p.pid: cpu_seconds([p]) for p in processes}
        out = tally()
        started = time.monotonic()
        await asyncio.gather(*(client(session, url, t, started + duration, skus, out) for t in tokens))
        elapsed = time.monotonic() - started
        cpu: dict[int, float] = {}
        for p in processes:
            try:
                cpu[p.pid] = cpu_seconds([p]) - before[p.pid]
            except psutil.NoSuchProcess:  # a backend whose pooled connection was closed meanwhile
                continue
    for pid, spy in spies.items():
        _, err = spy.communicate(timeout=60)
        if spy.returncode != 0:
            print(f"py-spy could not sample {names[pid]} (pid {pid}): {err.decode(errors='replace')[-300:]}")
    checkouts = len(out["latencies"])  # type: ignore[arg-type]
    if not checkouts:
        raise SystemExit("no checkout completed: nothing to divide by")
    print(
        f"{clients} clients, {elapsed:.1f} s: {checkouts} checkouts ({checkouts / elapsed:.1f}/s), "
        f"errors {out['errors']}, CPU {sum(cpu.values()) / checkouts * 1000:.2f} ms per checkout"
    )

    by_process: dict[str, dict[str, float]] = {}
    leaves: collections.Counter[str] = collections.Counter()
    for pid, seconds in sorted(cpu.items(), key=lambda kv: -kv[1]):
        ms = seconds / checkouts * 1000
        name = names[pid]
        stages, leaf = read_samples(work / f"{pid}.raw")
        total = sum(stages.values())
        row = by_process.setdefault(name, dict.fromkeys(STAGES, 0.0))
        if total:
            for stage, count in stages.items():
                row[stage] += ms * count / total
            for function, count in leaf.items():
                leaves[f"{name}: {function}"] += ms * count / total  # type: ignore[assignment]
        else:  # not sampled (nats-server, PostgreSQL): its CPU stays whole
            row["other"] += ms
    columns = list(by_process)
    rows = [
        (stage, *(by_process[c][stage] for c in columns), sum(by_process[c][stage] for c in columns))
        for stage in STAGES
    ]
    rows.append(
        ("total", *(sum(by_process[c].values()) for c in columns), sum(sum(r.values()) for r in by_process.values()))
    )
    table("CPU per checkout (ms) by stage and process", rows, ["stage", *columns, "all"])
    top = [(name, ms) for name, ms in leaves.most_common(15)]
    table("the 15 functions with the most CPU per checkout (ms), innermost frame", top, ["process: function", "ms"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=8, help="concurrent customers (default 8)")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds sampled (default 20)")
    parser.add_argument("--rate", type=int, default=250, help="samples per second per process (default 250)")
    parser.add_argument("--pure", action="store_true", help="run the shop interpreted (every stage has frames)")
    parser.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite", help="the shop's databases")
    parser.add_argument(
        "--postgres", default=DEFAULT_SERVER, help=f"with --database postgres: the server ({DEFAULT_SERVER})"
    )
    add_smoke(parser)
    args = parser.parse_args()
    if args.smoke:
        args.clients, args.duration, args.rate = 1, 2.0, 100
    with tempfile.TemporaryDirectory(prefix="meshop-bench-profile-") as tmp:
        work = Path(tmp)
        env = {}
        if args.pure:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(pure_tree(work)), os.environ.get("PYTHONPATH")]))
        databases = BenchDatabases(args.postgres, "profile") if args.database == "postgres" else None
        if databases is not None:
            print(f"PostgreSQL {asyncio.run(databases.check())}, databases {databases.prefix}*")
            env.update(databases.env)
        process, url, ready_s = start_shop(work / "data", env)
        try:
            print(f"meshop up ({'pure Python' if args.pure else 'compiled'}): ready in {ready_s:.1f}s at {url}")
            asyncio.run(profile(url, process.pid, args.clients, args.duration, args.rate, work, databases))
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(30)
            if databases is not None:
                asyncio.run(databases.drop())


if __name__ == "__main__":
    main()
