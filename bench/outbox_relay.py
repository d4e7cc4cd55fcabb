"""The outbox relay's own cost: CPU and statements per event, with no shop around it.

    python bench/outbox_relay.py --events 2000
    python bench/outbox_relay.py --smoke     # its shortest mode: a few events, the same table

One process, one SQLite database (orders' migrations, so its outbox table), a nats-server of
its own. Writers commit one event per transaction, as the services do, and the running relay
(woken by each commit) publishes them. At 1 writer every event has a sweep of its own; at 8,
events commit while a sweep runs, so the next sweep carries several. Reported per event:

- the relay's CPU: this process's CPU with the relay running, less the same writes with no
  relay (emit only), measured in alternate rounds so the machine's drifts fall on both;
- nats-server's CPU (its process's, everything it did meanwhile);
- the relay's statements: what SQLite ran (`sql_trace_dir`), less emit's own.

It uses only the relay's public API, so another tree is measured by running this file with
that tree's interpreter: `/path/to/other/.venv/bin/python bench/outbox_relay.py`.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import msgspec
import nats
import psutil
from nats.aio.client import Client as NatsClient

import meshop.services.orders.app as orders_app
from _common import add_smoke, table
from meshop.mesh.data.store import Database
from meshop.mesh.events.envelope import EventType
from meshop.mesh.events.outbox import OutboxRelay, emit, outbox
from meshop.runtime.nats_server import EmbeddedNats

#: Between a writer's commits: a service's transactions are not back to back.
PAUSE_S = 0.002


class Measured(msgspec.Struct, frozen=True):
    n: int


class Run(msgspec.Struct):
    cpu_s: float
    server_cpu_s: float
    statements: int


async def writes(db: Database, kind: EventType[Measured], events: int, writers: int) -> None:
    async def writer() -> None:
        for n in range(events // writers):
            async with db.begin() as conn:
                await emit(conn, kind, Measured(n=n))
            await asyncio.sleep(PAUSE_S)

    await asyncio.gather(*(writer() for _ in range(writers)))


def _size(path: Path) -> int:
    return path.stat().st_size


def _lines_after(path: Path, offset: int) -> int:
    """Statements traced since `offset` (one a line)."""
    with path.open("rb") as f:
        f.seek(offset)
        return len(f.read().splitlines())


async def one_run(
    db: Database, nc: NatsClient, server: psutil.Process, trace: Path, *, events: int, writers: int, relay: bool
) -> Run:
    """`events` committed by `writers`, with the relay running (until all are published) or not."""
    service = f"bench{uuid.uuid4().hex[:8]}"
    kind = EventType(source=service, name="Measured", data=Measured)
    runner = OutboxRelay(db, nc, service=service)
    await runner.ensure_stream()
    task = asyncio.create_task(runner.run_forever()) if relay else None
    await asyncio.sleep(0.1)  # its first sweep (of nothing) is over
    offset, server_before, started = _size(trace), server.cpu_times(), time.process_time()
    await writes(db, kind, events, writers)
    while relay and runner.published < events // writers * writers:  # noqa: ASYNC110 (a counter, no event)
        await asyncio.sleep(0.001)
    cpu_s, server_after = time.process_time() - started, server.cpu_times()
    if task is not None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    else:  # what the relay would have published: not left for the next run's relay
        async with db.begin() as conn:
            await conn.execute(outbox.update().where(outbox.c.sent_at.is_(None)).values(sent_at=time.time()))
    statements = _lines_after(trace, offset)
    await nc.jetstream().delete_stream(runner.stream)
    server_cpu_s = (server_after.user + server_after.system) - (server_before.user + server_before.system)
    return Run(cpu_s=cpu_s, server_cpu_s=server_cpu_s, statements=statements)


async def run(events: int, rounds: int, writer_counts: list[int]) -> None:
    with tempfile.TemporaryDirectory(prefix="meshop-bench-relay-") as tmp:
        nats_server = EmbeddedNats(Path(tmp) / "nats")
        url = await nats_server.start()
        assert nats_server.process is not None
        server = psutil.Process(nats_server.process.pid)
        traces = Path(tmp) / "traces"
        traces.mkdir()
        db = Database(f"sqlite+aiosqlite:///{tmp}/orders.db", name="orders", sql_trace_dir=traces)
        nc = await nats.connect(url)
        rows = []
        try:
            await db.ensure_exists()
            await db.migrate(Path(orders_app.__file__).parent / "migrations")
            async with db.read() as conn:  # opens the traced connection, so its file exists
                await conn.execute(outbox.select().limit(1))
            trace = next(traces.glob("*.sql"))
            for writers in writer_counts:
                with_relay, emit_only = [], []
                for _ in range(rounds):
                    for relay, runs in ((True, with_relay), (False, emit_only)):
                        runs.append(await one_run(db, nc, server, trace, events=events, writers=writers, relay=relay))
                n = events // writers * writers
                relay_us = [(a.cpu_s - b.cpu_s) / n * 1e6 for a, b in zip(with_relay, emit_only, strict=True)]
                server_us = [
                    (a.server_cpu_s - b.server_cpu_s) / n * 1e6 for a, b in zip(with_relay, emit_only, strict=True)
                ]
                statements = [(a.statements - b.statements) / n for a, b in zip(with_relay, emit_only, strict=True)]
                rows.append(
                    (
                        writers,
                        n,
                        statistics.median(relay_us),
                        f"{min(relay_us):.0f}-{max(relay_us):.0f}",
                        statistics.median(server_us),
                        statistics.median(statements),
                    )
                )
        finally:
            await nc.close()
            await db.close()
            await nats_server.stop()
    table(
        f"the outbox relay per event, median of {rounds} rounds (each against emit only, same round)",
        rows,
        ["writers", "events", "relay CPU us", "range", "nats-server CPU us", "relay statements"],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=2000, help="events per run (default 2000)")
    parser.add_argument("--rounds", type=int, default=3, help="runs with and without the relay each (default 3)")
    add_smoke(parser)
    args = parser.parse_args()
    if args.smoke:
        asyncio.run(run(40, 1, [1, 8]))
    else:
        asyncio.run(run(args.events, args.rounds, [1, 8]))


if __name__ == "__main__":
    main()
