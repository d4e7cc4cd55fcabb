"""Where a transaction's time goes on PostgreSQL: the mesh's data layer, asyncpg alone, the commit.

    python bench/postgres_path.py [--transactions 1000] [--rounds 2] [--postgres URL]

In this process, on a fresh database it drops after (127.0.0.1:5432 by default, trust auth):
one-statement transactions, a write (an INSERT) and a read (a SELECT by key), each
1. through `Database` (`begin()`/`read()`: SQLAlchemy's async engine on asyncpg, as every
   service runs them), and
2. on an asyncpg pool alone (`acquire()`, `transaction()`, one prepared statement);
plus the write on asyncpg with `synchronous_commit` on (what the shop runs, asserted by
tests/mesh/test_store.py) and off (for this benchmark only): their difference is the wait
for PostgreSQL's WAL flush that every commit pays, the part of a transaction's latency
no client code can take back. Rounds alternate the paths; CPU is this process's (the
client's), wall time per transaction includes the server's.

Issue 26 says where PostgreSQL is the bottleneck; this measures the client side's share.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable

import asyncpg
import sqlalchemy as sa

from _common import add_smoke, table
from _databases import DEFAULT_SERVER, BenchDatabases
from meshop.mesh.data.store import Database

metadata = sa.MetaData()
items = sa.Table("bench_items", metadata, sa.Column("id", sa.Integer, primary_key=True), sa.Column("v", sa.String(20)))
_INSERT = items.insert()
_SELECT = sa.select(items.c.v).where(items.c.id == sa.bindparam("b_id"))

Step = Callable[[int], Awaitable[None]]


async def measure(step: Step, first: int, n: int) -> tuple[float, float]:
    """(CPU µs, wall µs) per call of `step` over ids first..first+n."""
    cpu, wall = time.process_time(), time.perf_counter()
    for i in range(first, first + n):
        await step(i)
    return (time.process_time() - cpu) / n * 1e6, (time.perf_counter() - wall) / n * 1e6


async def run(server: str, transactions: int, rounds: int) -> None:
    databases = BenchDatabases(server, "path")
    await databases.check()
    name = databases.prefix + "bench"
    try:
        db = Database(f"{server.replace('postgresql://', 'postgresql+asyncpg://')}/{name}", name="bench")
        await db.ensure_exists()  # as a service makes its own
        pool = await asyncpg.create_pool(f"{server}/{name}", min_size=1, max_size=5)
        try:
            async with db.begin() as conn:
                await conn.run_sync(metadata.create_all)

            async def layer_write(i: int) -> None:
                async with db.begin() as conn:
                    await conn.execute(_INSERT, {"id": i, "v": "x"})

            async def layer_read(i: int) -> None:
                async with db.read() as conn:
                    (await conn.execute(_SELECT, {"b_id": i})).first()

            async def asyncpg_write(i: int) -> None:
                async with pool.acquire() as conn, conn.transaction():
                    await conn.execute("INSERT INTO bench_items (id, v) VALUES ($1, $2)", i, "x")

            async def asyncpg_read(i: int) -> None:
                async with pool.acquire() as conn, conn.transaction():
                    await conn.fetchrow("SELECT v FROM bench_items WHERE id = $1", i)

            def commit_on(conn: asyncpg.Connection) -> Step:
                async def write(i: int) -> None:
                    async with conn.transaction():
                        await conn.execute("INSERT INTO bench_items (id, v) VALUES ($1, $2)", i, "x")

                return write

            paths: list[tuple[str, Step, bool]] = [
                ("write, through Database (SQLAlchemy)", layer_write, True),
                ("write, asyncpg alone", asyncpg_write, True),
                ("read, through Database (SQLAlchemy)", layer_read, False),
                ("read, asyncpg alone", asyncpg_read, False),
            ]
            found: dict[str, list[tuple[float, float]]] = {}
            next_id = 1
            written = 0
            for _ in range(rounds):
                for label, step, writes in paths:
                    if writes:
                        found.setdefault(label, []).append(await measure(step, next_id, transactions))
                        next_id += transactions
                        written = next_id
                    else:  # read what the writes left, by key
                        found.setdefault(label, []).append(await measure(step, 1, min(transactions, written - 1)))
                async with pool.acquire() as conn:  # the two commits, on one connection each
                    await conn.execute("SET synchronous_commit = on")
                    on = await measure(commit_on(conn), next_id, transactions)
                    next_id += transactions
                    await conn.execute("SET synchronous_commit = off")
                    off = await measure(commit_on(conn), next_id, transactions)
                    next_id += transactions
                    await conn.execute("RESET synchronous_commit")
                found.setdefault("write, asyncpg, synchronous_commit on", []).append(on)
                found.setdefault("write, asyncpg, synchronous_commit off (benchmark only)", []).append(off)
            rows = [
                (
                    label,
                    statistics.median(c for c, _ in samples),
                    statistics.median(w for _, w in samples),
                )
                for label, samples in found.items()
            ]
            table(
                f"one-statement transactions on PostgreSQL ({transactions} per round, {rounds} rounds, medians)",
                rows,
                ["path", "client CPU µs", "wall µs"],
            )
            med = {label: (cpu, wall) for label, cpu, wall in rows}
            for kind in ("write", "read"):
                layer = med[f"{kind}, through Database (SQLAlchemy)"]
                alone = med[f"{kind}, asyncpg alone"]
                print(
                    f"{kind}: the data layer costs {layer[0] / alone[0]:.2f}x asyncpg's client CPU "
                    f"(+{layer[0] - alone[0]:.0f} µs per transaction)"
                )
            flush = (
                med["write, asyncpg, synchronous_commit on"][1]
                - med["write, asyncpg, synchronous_commit off (benchmark only)"][1]
            )
            print(f"waiting for the WAL flush: {flush:.0f} µs per commit")
        finally:
            await pool.close()
            await db.close()
    finally:
        await databases.drop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--transactions", type=int, default=1000, help="per path and round (default 1000)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds, the paths alternated (default 2)")
    parser.add_argument("--postgres", default=DEFAULT_SERVER, help=f"the server ({DEFAULT_SERVER})")
    add_smoke(parser)
    args = parser.parse_args()
    if args.smoke:
        args.transactions, args.rounds = 20, 1
    asyncio.run(run(args.postgres.rstrip("/"), args.transactions, args.rounds))


if __name__ == "__main__":
    main()
