"""`bench/checkout.py --baseline TREE`: a baseline tree's shop and this tree's, in one run.

Both shops run at once, each from its own tree (its interpreter and `PYTHONPATH`), its
own fresh data dir and free port — and on PostgreSQL its own fresh databases — with
tracing, metrics and service identity on (the defaults of `meshop up`; set explicitly and
checked on the running shops at the end). Only one is loaded at a time: for each client
count the rounds alternate, baseline then new, then new then baseline (B N N B ...), so
that drift of a shared machine hits both alike. Per side and client count it prints
checkouts/s, p50/p99 (POST until CONFIRMED), errors, CPU per checkout by process (and the
PostgreSQL backends serving the shop's databases) and the highest RSS of each process;
then the ratios new/baseline against issue 26's targets, each marked met or not met.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import os
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from _common import pct, table
from _databases import BenchDatabases
from baseline_tree import ROOT, Tree, build, cache_dir, resolve
from checkout import SKUS, client, process_name, shop_processes, signup, start_shop, tally

SIDES = ("baseline", "new")
ADMIN_PASSWORD = "bench-admin-password"
#: Issue 26's targets, as ratios new/baseline in the same run.
THROUGHPUT_AT_LEAST = 2.5  # checkouts/s at the best concurrency
CPU_AT_MOST = 0.35  # CPU per checkout, at every client count
P50_AT_MOST = 0.6  # p50 at 1 client
RSS_AT_MOST_MIB = 80.0  # every service process (decision 0003), the gateway's and the console's too
#: Not service processes: the RSS target is not theirs (their RSS is printed all the same).
NOT_SERVICES = frozenset({"supervisor", "nats-server"})
POSTGRES = "postgres backends"


def tree_of(baseline: str) -> Tree:
    """TREE as given: a path (used as it is) or a commit-ish (built once into a cache dir)."""
    if Path(baseline).exists():
        return Tree.of(Path(baseline))
    return build(baseline, cache_dir(resolve(baseline)))


@dataclass
class Shop:
    side: str
    tree: Tree
    data_dir: Path
    databases: BenchDatabases | None
    process: subprocess.Popen[bytes] | None = None
    url: str = ""
    ready_s: float = 0.0

    def start(self) -> None:
        env = {
            **self.tree.env,
            # The defaults, set all the same: a tree whose defaults differ is measured with them on.
            "MESHOP_TRACING": "true",
            "MESHOP_METRICS": "true",
            "MESHOP_ADMIN_PASSWORD": ADMIN_PASSWORD,
            **(self.databases.env if self.databases else {}),
        }
        self.process, self.url, self.ready_s = start_shop(self.data_dir, env, python=self.tree.python)

    def stop(self) -> None:
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)


@dataclass
class Round:
    side: str
    clients: int
    number: int
    elapsed_s: float
    latencies_s: list[float]
    errors: int
    #: CPU seconds by process name (the shop's processes; PostgreSQL's backends as POSTGRES).
    cpu_s: dict[str, float]


def _cpu(process: psutil.Process) -> float | None:
    try:
        times = process.cpu_times()
    except psutil.Error:
        return None
    return times.user + times.system


class PeakRss:
    """The highest RSS seen per side and process name, sampled in a thread while a shop is loaded."""

    def __init__(self) -> None:
        self.mib: dict[str, dict[str, float]] = {side: {} for side in SIDES}

    def _sample(self, side: str, named: list[tuple[str, psutil.Process]]) -> None:
        for name, process in named:
            with contextlib.suppress(psutil.Error):
                rss = process.memory_info().rss / 2**20
                self.mib[side][name] = max(rss, self.mib[side].get(name, 0.0))

    @contextlib.contextmanager
    def sampling(self, side: str, named: list[tuple[str, psutil.Process]], every_s: float = 0.5) -> Iterator[None]:
        stop = threading.Event()

        def run() -> None:
            while not stop.wait(every_s):
                self._sample(side, named)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            self._sample(side, named)


async def one_round(
    shop: Shop,
    session: aiohttp.ClientSession,
    tokens: list[str],
    number: int,
    seconds: float,
    warmup_s: float,
    rss: PeakRss,
) -> Round:
    assert shop.process is not None
    skus = itertools.cycle(SKUS)
    if warmup_s > 0:  # the shop was idle while the other was loaded
        warm = tally()
        await asyncio.gather(*(client(session, shop.url, t, time.monotonic() + warmup_s, skus, warm) for t in tokens))
    named = []
    for process in shop_processes(shop.process.pid):
        with contextlib.suppress(psutil.Error):
            named.append((process_name(process), process))
    if shop.databases is not None:
        for pid in await shop.databases.backend_pids():
            with contextlib.suppress(psutil.Error):
                named.append((POSTGRES, psutil.Process(pid)))
    before = {process.pid: _cpu(process) for _, process in named}
    out = tally()
    with rss.sampling(shop.side, [(n, p) for n, p in named if n != POSTGRES]):
        started = time.monotonic()
        await asyncio.gather(*(client(session, shop.url, t, started + seconds, skus, out) for t in tokens))
        elapsed = time.monotonic() - started
    cpu: dict[str, float] = {}
    for name, process in named:
        start, end = before[process.pid], _cpu(process)
        if start is not None and end is not None:
            cpu[name] = cpu.get(name, 0.0) + end - start
    latencies: list[float] = out["latencies"]  # type: ignore[assignment]
    errors: int = out["errors"]  # type: ignore[assignment]
    return Round(shop.side, len(tokens), number, elapsed, latencies, errors, cpu)


@dataclass
class Summary:
    """One side at one client count, its rounds together."""

    rounds: list[Round] = field(default_factory=list)

    @property
    def checkouts(self) -> int:
        return sum(len(r.latencies_s) for r in self.rounds)

    @property
    def throughput(self) -> float:
        return self.checkouts / sum(r.elapsed_s for r in self.rounds)

    @property
    def spread(self) -> str:
        """The rounds' lowest and highest checkouts/s: how much the machine moved under this side."""
        each = [len(r.latencies_s) / r.elapsed_s for r in self.rounds]
        return f"{min(each):.1f}-{max(each):.1f}"

    def latency_ms(self, q: float) -> float:
        return pct([s for r in self.rounds for s in r.latencies_s], q) * 1000

    @property
    def errors(self) -> int:
        return sum(r.errors for r in self.rounds)

    def cpu_ms(self) -> dict[str, float]:
        """CPU ms per checkout by process name."""
        total: dict[str, float] = {}
        for r in self.rounds:
            for name, seconds in r.cpu_s.items():
                total[name] = total.get(name, 0.0) + seconds
        return {name: s * 1000 / max(1, self.checkouts) for name, s in total.items()}

    @property
    def cpu_ms_total(self) -> float:
        """Every process that serves a checkout: the shop's and, on PostgreSQL, its backends."""
        return sum(self.cpu_ms().values())

    @property
    def postgres_cores(self) -> float:
        busy = sum(r.cpu_s.get(POSTGRES, 0.0) for r in self.rounds)
        return busy / sum(r.elapsed_s for r in self.rounds)

    def as_dict(self) -> dict[str, Any]:
        return {
            "checkouts": self.checkouts,
            "checkouts_per_s": self.throughput,
            "p50_ms": self.latency_ms(0.5),
            "p99_ms": self.latency_ms(0.99),
            "errors": self.errors,
            "cpu_ms_per_checkout": self.cpu_ms_total,
            "cpu_ms_per_checkout_by_process": self.cpu_ms(),
            "postgres_cores_busy": self.postgres_cores,
            "rounds": [
                {"number": r.number, "elapsed_s": r.elapsed_s, "checkouts": len(r.latencies_s)} for r in self.rounds
            ],
        }


async def observability(shop: Shop, session: aiohttp.ClientSession) -> dict[str, str]:
    """Whether tracing, metrics and service identity are on in the running shop, and the evidence."""
    found: dict[str, str] = {}
    try:
        async with session.get(shop.url + "/metrics") as resp:
            text = await resp.text()
        on = resp.status == 200 and "meshop_http" in text
        found["metrics"] = f"{'on' if on else 'OFF'} (the gateway's /metrics: {resp.status})"
    except Exception as exc:
        found["metrics"] = f"unknown ({exc!r})"
    try:
        login = {"email": "admin@meshop.local", "password": ADMIN_PASSWORD}
        async with session.post(shop.url + "/api/users/login", json=login) as resp:
            token = (await resp.json())["access_token"]
        headers = {"authorization": f"Bearer {token}"}
        async with session.get(shop.url + "/api/console/overview", headers=headers) as resp:
            spans = int((await resp.json())["traces"]["spans"])
        found["tracing"] = f"{'on' if spans else 'OFF'} (the console received {spans} spans)"
    except Exception as exc:
        found["tracing"] = f"unknown ({exc!r})"
    try:
        status = await asyncio.to_thread(
            subprocess.run,
            [shop.tree.python, "-m", "meshop", "status", "--data-dir", str(shop.data_dir), "--json"],
            env={**os.environ, **shop.tree.env},
            capture_output=True,
            check=True,
            timeout=60,
        )
        address = next(row["address"] for row in json.loads(status.stdout) if row["service"] == "inventory")
        # An INTERNAL operation called with no service identity: refused (401) when identity is on.
        async with session.post(f"http://{address}/internal/reservations/none/release") as resp:
            refused = resp.status == 401 and "identity" in await resp.text()
        found["identity"] = f"{'on' if refused else 'OFF'} (an internal call without identity: {resp.status})"
    except Exception as exc:
        found["identity"] = f"unknown ({exc!r})"
    return found


async def drive(
    shops: dict[str, Shop], counts: list[int], rounds: int, seconds: float, warmup_s: float
) -> tuple[list[Round], PeakRss, dict[str, dict[str, str]]]:
    sessions = {side: aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) for side in SIDES}
    try:
        tokens = {side: [await signup(sessions[side], shops[side].url) for _ in range(max(counts))] for side in SIDES}
        rss, done = PeakRss(), []
        for count in counts:
            for number in range(1, rounds + 1):
                order = SIDES if number % 2 else SIDES[::-1]
                now = {}
                for side in order:
                    now[side] = await one_round(
                        shops[side], sessions[side], tokens[side][:count], number, seconds, warmup_s, rss
                    )
                    done.append(now[side])
                print(
                    f"clients {count:2d}, round {number}: "
                    + " · ".join(
                        f"{side} {len(r.latencies_s) / r.elapsed_s:6.1f}/s p50 {pct(r.latencies_s, 0.5) * 1000:6.1f} ms"
                        for side, r in now.items()
                    ),
                    flush=True,
                )
        checks = {side: await observability(shops[side], sessions[side]) for side in SIDES}
    finally:
        for session in sessions.values():
            await session.close()
    return done, rss, checks


def _ratio(new: float, base: float) -> float:
    return new / base if base else math.nan


def verdicts(summary: dict[str, dict[int, Summary]], rss: PeakRss) -> list[dict[str, Any]]:
    """Issue 26's targets, each with its measured value and whether it is met."""
    base, new = summary["baseline"], summary["new"]
    found = []
    best_new = max(new, key=lambda c: new[c].throughput)
    best_base = max(base, key=lambda c: base[c].throughput)
    ratio = _ratio(new[best_new].throughput, base[best_base].throughput)
    what = f"checkouts/s at the best concurrency (new at {best_new}, baseline at {best_base} clients)"
    found.append(
        {"target": what, "value": ratio, "bound": f">= {THROUGHPUT_AT_LEAST}x", "met": ratio >= THROUGHPUT_AT_LEAST}
    )
    for count in new:
        ratio = _ratio(new[count].cpu_ms_total, base[count].cpu_ms_total)
        found.append(
            {
                "target": f"CPU per checkout at {count} clients",
                "value": ratio,
                "bound": f"<= {CPU_AT_MOST}x",
                "met": ratio <= CPU_AT_MOST,
            }
        )
    if 1 in new:
        ratio = _ratio(new[1].latency_ms(0.5), base[1].latency_ms(0.5))
        found.append(
            {"target": "p50 at 1 client", "value": ratio, "bound": f"<= {P50_AT_MOST}x", "met": ratio <= P50_AT_MOST}
        )
    errors = sum(s.errors for s in new.values())
    found.append({"target": "errors (new)", "value": errors, "bound": "= 0", "met": errors == 0})
    services = {name: mib for name, mib in rss.mib["new"].items() if name not in NOT_SERVICES}
    top = max(services, key=services.__getitem__) if services else "none"
    peak = services.get(top, math.nan)
    found.append(
        {
            "target": f"RSS of every service process (new; highest: {top})",
            "value": peak,
            "bound": f"<= {RSS_AT_MOST_MIB:.0f} MiB",
            "met": peak <= RSS_AT_MOST_MIB,
        }
    )
    return found


def report(
    trees: dict[str, Tree], rounds: list[Round], rss: PeakRss, checks: dict[str, dict[str, str]], postgres: bool
) -> dict[str, Any]:
    counts = sorted({r.clients for r in rounds})
    summary: dict[str, dict[int, Summary]] = {side: {c: Summary() for c in counts} for side in SIDES}
    for r in rounds:
        summary[r.side][r.clients].rounds.append(r)
    table(
        f"checkout, baseline {trees['baseline'].commit[:12]} vs new {trees['new'].commit[:12]} "
        f"({len(rounds) // len(counts) // 2} interleaved rounds per side and client count)",
        [
            (side, c, s.throughput, s.spread, s.latency_ms(0.5), s.latency_ms(0.99), s.errors, s.cpu_ms_total)
            for c in counts
            for side in SIDES
            for s in [summary[side][c]]
        ],
        ["side", "clients", "checkouts/s", "rounds' range", "p50 ms", "p99 ms", "errors", "CPU ms/checkout"],
    )
    names = sorted(
        {n for side in SIDES for s in summary[side].values() for n in s.cpu_ms()},
        key=lambda n: (n == POSTGRES, -summary["baseline"][counts[-1]].cpu_ms().get(n, 0.0)),
    )
    rows = []
    for name in [*names, "total"]:
        row: list[object] = [name]
        for c in counts:
            b, n = (
                summary[side][c].cpu_ms_total if name == "total" else summary[side][c].cpu_ms().get(name, 0.0)
                for side in SIDES
            )
            row += [b, n, f"{_ratio(n, b):.2f}"]
        rows.append(tuple(row))
    table(
        "CPU ms per checkout by process (b: baseline, n: new, x: n/b)",
        rows,
        ["process", *(f"{h}@{c}" for c in counts for h in ("b", "n", "x"))],
    )
    if postgres:
        print(
            "PostgreSQL's backends, cores busy (of "
            f"{os.cpu_count()}): "
            + ", ".join(
                f"{side} {s.postgres_cores:.2f} at {c}" for c in counts for side in SIDES for s in [summary[side][c]]
            )
            + " — where they near the machine's cores, PostgreSQL is the bottleneck, not meshop"
        )
    table(
        "highest RSS per process, MiB (sampled every 0.5 s under load)",
        [
            (name, rss.mib["baseline"].get(name, math.nan), rss.mib["new"].get(name, math.nan))
            for name in sorted(set(rss.mib["baseline"]) | set(rss.mib["new"]))
        ],
        ["process", "baseline", "new"],
    )
    print(
        "\non in each shop (MESHOP_TRACING=true, MESHOP_METRICS=true; service identity has no switch in `meshop up`):"
    )
    for side in SIDES:
        print(f"  {side}: " + "; ".join(f"{what} {state}" for what, state in checks[side].items()))
    print("\nnew / baseline, same run (issue 26's targets):")
    for c in counts:
        b, n = summary["baseline"][c], summary["new"][c]
        print(
            f"  {c:2d} clients: checkouts/s {_ratio(n.throughput, b.throughput):.2f}x, "
            f"p50 {_ratio(n.latency_ms(0.5), b.latency_ms(0.5)):.2f}x, "
            f"p99 {_ratio(n.latency_ms(0.99), b.latency_ms(0.99)):.2f}x, "
            f"CPU per checkout {_ratio(n.cpu_ms_total, b.cpu_ms_total):.2f}x"
        )
    found = verdicts(summary, rss)
    for v in found:
        value = f"{v['value']:.2f}x" if str(v["bound"]).endswith("x") else f"{v['value']:.0f}"
        print(f"  target: {v['target']}: {value} (target {v['bound']}) — {'met' if v['met'] else 'NOT MET'}")
    return {
        "trees": {side: {**asdict(trees[side]), "path": str(trees[side].path)} for side in SIDES},
        "results": {side: {str(c): summary[side][c].as_dict() for c in counts} for side in SIDES},
        "rss_mib": rss.mib,
        "on": checks,
        "targets": found,
    }


def compare(
    baseline: str,
    *,
    counts: list[int],
    seconds: float,
    rounds: int,
    warmup_s: float,
    postgres_server: str | None,
) -> dict[str, Any]:
    """Run both shops, interleaved, and print (and return) the comparison."""
    trees = {"baseline": tree_of(baseline), "new": Tree.of(ROOT)}
    for side in SIDES:
        tree = trees[side]
        print(f"{side}: commit {tree.commit} in {tree.path} ({tree.python}, {tree.venv} venv)")
    run = uuid.uuid4().hex[:8]
    shops: dict[str, Shop] = {}
    with tempfile.TemporaryDirectory(prefix="meshop-bench-vs-") as tmp:
        for side in SIDES:
            databases = BenchDatabases(postgres_server, side[:4], run=run) if postgres_server else None
            shops[side] = Shop(side, trees[side], Path(tmp) / side, databases)
        try:
            for shop in shops.values():
                if shop.databases is not None:
                    version = asyncio.run(shop.databases.check())
                    where = f"{shop.databases.server}, databases {shop.databases.prefix}*"
                    print(f"{shop.side}: PostgreSQL {version} at {where}")
                shop.start()
                print(f"{shop.side}: meshop up ready in {shop.ready_s:.1f}s at {shop.url}", flush=True)
            print(
                f"clients {', '.join(map(str, counts))}; {rounds} rounds of {seconds:g} s per side and client count "
                f"(after {warmup_s:g} s of warm-up each), one shop loaded at a time"
            )
            rounds_done, rss, checks = asyncio.run(drive(shops, counts, rounds, seconds, warmup_s))
        finally:
            for shop in shops.values():
                shop.stop()
            for shop in shops.values():
                if shop.databases is not None:
                    dropped = asyncio.run(shop.databases.drop())
                    print(f"{shop.side}: dropped {len(dropped)} databases ({shop.databases.prefix}*)")
    result = report(trees, rounds_done, rss, checks, postgres=postgres_server is not None)
    return {"database": "postgres" if postgres_server else "sqlite", "seconds_per_round": seconds, **result}
