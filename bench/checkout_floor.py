"""The floor of a checkout: its own database work and its network hops, with no framework around them.

    python bench/checkout_floor.py [--duration 10] [--smoke]

Starts `meshop up` with every SQLite database tracing its statements as SQLite expands
them (`MESHOP_SQL_TRACE_DIR`), runs one customer's checkouts for `--duration` seconds, and
counts what they took: the requests every process served (`meshop_http_requests` from each
process's /metrics), the events written to outboxes and applied by consumers, and every
statement. Then it prices that work with nothing around it, in this process:

- the database: each service's statements of the window replayed with Python's sqlite3
  alone, on a copy of its database taken (with SQLite's backup API) where the window
  began, with the shop's settings (WAL, synchronous=NORMAL, foreign keys);
- the hops: the same number of HTTP/1.1 round trips over loopback between two bare
  asyncio protocols (both ends' CPU; a request line, four headers, 100 bytes of JSON);
- each event as two more round trips (a JetStream publish is a request with an
  acknowledgement, a consumer's fetch another).

It prints the shop's CPU per checkout beside that floor and their ratio: what the
framework (server, routing, validation, the client chain, spans, metrics, NATS clients,
SQLAlchemy, the event loop's scheduling) costs on top.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import aiohttp
import psutil

from _common import add_smoke, table
from checkout import SKUS, client, cpu_seconds, shop_processes, signup, start_shop, tally

_SERVED = re.compile(r"^meshop_http_requests_total\{([^}]*)\} (\S+)$", re.M)
_QUIET = ("/metrics", "/ready", "/health")  # scrapes and checks: not a checkout's
_ROUND_TRIP = (
    b"POST /x HTTP/1.1\r\nhost: s\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n" + b"x" * 100
)
_ANSWER = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n" + b"y" * 100


def served(data_dir: Path) -> int:
    """Requests served so far by every process of the shop, scrapes and health checks left out."""
    rows = json.loads(
        subprocess.run(
            [sys.executable, "-m", "meshop", "status", "--data-dir", str(data_dir), "--json"],
            capture_output=True,
            check=True,
            timeout=60,
        ).stdout
    )
    token = (data_dir / "scrape-token").read_text().strip()
    total = 0
    for row in rows:
        request = urllib.request.Request(
            f"http://{row['address']}/metrics", headers={"authorization": f"Bearer {token}"}
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            text = answer.read().decode()
        for labels, value in _SERVED.findall(text):
            if not any(f'route="{quiet}' in labels for quiet in _QUIET):
                total += int(float(value))
    return total


def traces(trace_dir: Path) -> dict[str, Path]:
    """Each service's trace file (one process per service)."""
    return {path.name.split(".")[0]: path for path in trace_dir.glob("*.sql")}


def settled_offsets(trace_dir: Path, within_s: float = 10.0) -> dict[str, int]:
    """Each trace's length at a moment when no transaction is open in any of them."""
    deadline = time.monotonic() + within_s
    while True:
        files = traces(trace_dir)
        offsets = {name: path.stat().st_size for name, path in files.items()}
        if all(_closed(path, offsets[name]) for name, path in files.items()):
            return offsets
        if time.monotonic() > deadline:
            raise SystemExit("the shop never paused between transactions: no consistent point to copy at")
        time.sleep(0.02)


def _closed(path: Path, offset: int) -> bool:
    with path.open("rb") as f:
        f.seek(max(0, offset - 4096))
        lines = f.read(offset - max(0, offset - 4096)).splitlines()
    last = json.loads(lines[-1]) if lines else "COMMIT"
    return bool(re.match(r"(COMMIT|ROLLBACK|SELECT|PRAGMA)", last, re.I))


def snapshot(data_dir: Path, names: list[str], into: Path) -> None:
    into.mkdir()
    for name in names:
        source = sqlite3.connect(data_dir / f"{name}.db")
        target = sqlite3.connect(into / f"{name}.db")
        try:
            source.backup(target)
        finally:
            source.close()
            target.close()


def consistent_snapshot(data_dir: Path, trace_dir: Path, into: Path, attempts: int = 50) -> dict[str, int]:
    """Copies of the databases, and the traces' lengths they match: taken again while any
    statement that writes ran during the copy (the relays' and consumers' polls only read)."""
    for _ in range(attempts):
        offsets = settled_offsets(trace_dir)
        shutil.rmtree(into, ignore_errors=True)
        snapshot(data_dir, sorted(offsets), into)
        after = settled_offsets(trace_dir)
        files = traces(trace_dir)
        if all(_reads_only(window(files[name], offsets[name], after.get(name, offsets[name]))) for name in offsets):
            return offsets
    raise SystemExit(f"statements that write ran during each of {attempts} copies: no consistent point")


def _reads_only(statements: list[str]) -> bool:
    return all(re.match(r"\s*(BEGIN|COMMIT|ROLLBACK|SELECT|PRAGMA)\b", s, re.I) for s in statements)


def window(path: Path, start: int, end: int) -> list[str]:
    with path.open("rb") as f:
        f.seek(start)
        return [json.loads(line) for line in f.read(end - start).splitlines()]


def replay(database: Path, statements: list[str]) -> tuple[float, int]:
    """CPU seconds to run `statements` on `database` with sqlite3 alone, and how many failed."""
    conn = sqlite3.connect(database, isolation_level=None)
    for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "foreign_keys=ON"):
        conn.execute(f"PRAGMA {pragma}")
    failed = 0
    started = time.process_time()
    for statement in statements:
        try:
            conn.execute(statement).fetchall()
        except sqlite3.Error:
            failed += 1
    spent = time.process_time() - started
    conn.close()
    return spent, failed


class _Server(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while len(self.buffer) >= len(_ROUND_TRIP):
            self.buffer = self.buffer[len(_ROUND_TRIP) :]
            self.transport.write(_ANSWER)  # type: ignore[attr-defined]


async def _serve(port_file: Path) -> None:
    server = await asyncio.get_running_loop().create_server(_Server, "127.0.0.1", 0)
    _write(port_file, str(server.sockets[0].getsockname()[1]))
    await asyncio.sleep(3600)


def _write(path: Path, text: str) -> None:
    path.write_text(text)


async def _round_trips(port: int, count: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for _ in range(count):
        writer.write(_ROUND_TRIP)
        await reader.readexactly(len(_ANSWER))
    writer.close()


def round_trip_cpu_s(work: Path, count: int = 5000) -> float:
    """Both ends' CPU for one bare HTTP/1.1 round trip over loopback (the server is a child)."""
    port_file = work / "echo-port"
    server = subprocess.Popen([sys.executable, __file__, "--serve-echo", str(port_file)])
    try:
        while not port_file.exists() or not port_file.read_text():
            time.sleep(0.01)
        port = int(port_file.read_text())
        asyncio.run(_round_trips(port, 200))  # warm
        child = psutil.Process(server.pid)
        before = cpu_seconds([child]) + time.process_time()
        asyncio.run(_round_trips(port, count))
        return (cpu_seconds([child]) + time.process_time() - before) / count
    finally:
        server.terminate()
        server.wait(10)


async def checkouts(url: str, seconds: float) -> int:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        token = await signup(session, url)
        out = tally()
        await client(session, url, token, time.monotonic() + seconds, itertools.cycle(SKUS), out)
        if out["errors"]:
            raise SystemExit(f"{out['errors']} checkouts failed: the floor needs every one to succeed")
        return len(out["latencies"])  # type: ignore[arg-type]


def measure(duration: float, work: Path) -> None:
    data_dir, trace_dir = work / "data", work / "sql"
    process, url, _ = start_shop(data_dir, {"MESHOP_SQL_TRACE_DIR": str(trace_dir)})
    try:
        asyncio.run(checkouts(url, 2.0))  # warm: caches, connections, seeds
        time.sleep(1.0)  # the warm-up's sagas, outbox and consumers finish
        offsets = consistent_snapshot(data_dir, trace_dir, work / "snapshot")
        names = sorted(offsets)
        requests_before = served(data_dir)
        processes = shop_processes(process.pid)
        cpu_before = cpu_seconds(processes)
        count = asyncio.run(checkouts(url, duration))
        time.sleep(1.5)  # the last checkout's events are published and applied
        shop_cpu = cpu_seconds(processes) - cpu_before
        hops = served(data_dir) - requests_before
        ends = settled_offsets(trace_dir)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(30)

    rows = []
    db_cpu = 0.0
    events = 0
    for name in names:
        statements = window(traces(trace_dir)[name], offsets[name], ends[name])
        spent, failed = replay(work / "snapshot" / f"{name}.db", statements)
        db_cpu += spent
        emitted = sum(1 for s in statements if s.lower().startswith("insert into outbox"))
        applied = sum(1 for s in statements if s.lower().startswith("insert into inbox"))
        events += emitted + applied
        rows.append((name, len(statements) / count, emitted / count, applied / count, spent / count * 1000, failed))
    table(
        f"each service's database work per checkout ({count} checkouts), replayed with sqlite3 alone",
        rows,
        ["service", "statements", "events out", "events in", "CPU ms", "failed"],
    )
    hop_s = round_trip_cpu_s(work)
    per = 1000 / count
    floor_ms = db_cpu * per + (hops + 2 * events) * hop_s * per
    shop_ms = shop_cpu * per
    table(
        "a checkout's CPU: the shop against its floor",
        [
            ("database, replayed with sqlite3 alone", db_cpu * per),
            (f"{hops / count:.1f} requests served x a bare round trip ({hop_s * 1e6:.0f} us)", hops * hop_s * per),
            (f"{events / count:.1f} events x 2 bare round trips", 2 * events * hop_s * per),
            ("floor", floor_ms),
            ("the shop (every process, nats-server included)", shop_ms),
            ("the shop / the floor", shop_ms / floor_ms),
        ],
        ["", "ms per checkout"],
    )


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--serve-echo":  # the round trips' server, as a child
        asyncio.run(_serve(Path(sys.argv[2])))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of checkouts measured (default 10)")
    add_smoke(parser)
    args = parser.parse_args()
    if args.smoke:
        args.duration = 1.5
    with tempfile.TemporaryDirectory(prefix="meshop-bench-floor-") as tmp:
        measure(args.duration, Path(tmp))


if __name__ == "__main__":
    main()
