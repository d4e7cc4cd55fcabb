"""The data layer's own cost: one checkout's saga, as orders writes it, on SQLite.

    python bench/database.py [--sagas 400] [--rounds 3]

In this process, without the shop: for each saga, the transaction that places the order
(the order and its saga), the five saves of its steps (each with the order's projection,
the last with OrderConfirmed into the outbox), entering the pivot, and two reads of the
order (the customer's long poll) — orders' statements of a checkout, less the outbox
relay's. It prints the CPU each saga took through `Database` (SQLAlchemy Core, the
inline SQLite path), the statements SQLite ran for it (`MESHOP_SQL_TRACE_DIR`'s trace),
and the same statements replayed with `sqlite3` alone on a copy of the database taken
before: what the layer costs on top of SQLite. Only APIs older than decision 0032 are
used, so the same file measures an older tree: `cd OLD && python NEW/bench/database.py`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

import meshop.services.orders.app as orders_app
from _common import add_smoke, table
from meshop.mesh.data.store import Database
from meshop.mesh.saga.log import SqlSagaLog, sagas
from meshop.mesh.saga.orchestrator import SagaState, SagaStatus
from meshop.services.orders import domain, store


async def one_saga(db: Database, log: SqlSagaLog, n: int, round_: int) -> None:
    state = SagaState(
        saga_id=f"{round_}-{n}",
        name="checkout",
        data={"user_id": "u1", "total_cents": 1999, "history": [{"at": "t", "event": "PLACED", "detail": None}]},
        deadline_at=time.time() + 30,
    )
    async with db.begin() as conn:
        await store.insert(
            conn,
            id=state.saga_id,
            user_id="u1",
            idempotency_key=state.saga_id,
            request_hash="h",
            status="PENDING",
            items='[{"sku":"APP-001","quantity":1,"name":"Apple","price_cents":1999}]',
            total_cents=1999,
            currency="EUR",
            history="[]",
            created_at="t",
        )
        await conn.execute(sagas.insert().values(**SqlSagaLog.row(state)))
    for step in range(1, 6):
        if step == 4:  # the pivot (capture) comes after reserve, authorize and ship
            await log.checkpoint(state, entering_pivot=True)
        domain.note(state, f"STEP_{step}", payment_status="AUTHORIZED")
        state.step = step
        if step == 5:
            state.status = SagaStatus.COMPLETED
        await log.save(state)
    for _ in range(2):
        async with db.read() as conn:
            await store.by_id(conn, state.saga_id)


def statements(trace_dir: Path) -> list[str]:
    return [json.loads(line) for path in sorted(trace_dir.glob("*.sql")) for line in path.read_text().splitlines()]


def replay(database: Path, lines: list[str]) -> float:
    conn = sqlite3.connect(database, isolation_level=None)
    for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "foreign_keys=ON"):
        conn.execute(f"PRAGMA {pragma}")
    started = time.process_time()
    for line in lines:
        conn.execute(line).fetchall()
    spent = time.process_time() - started
    conn.close()
    return spent


async def measure(work: Path, count: int, round_: int) -> tuple[float, int, float]:
    """(CPU s through Database, statements, CPU s replayed with sqlite3) for `count` sagas."""
    path = work / f"orders-{round_}.db"
    setup = Database(f"sqlite+aiosqlite:///{path}", name="orders")
    await setup.ensure_exists()
    await setup.migrate(Path(orders_app.__file__).parent / "migrations")
    await setup.close()
    copy = work / f"orders-{round_}-copy.db"
    source, target = sqlite3.connect(path), sqlite3.connect(copy)
    source.backup(target)
    source.close()
    target.close()
    trace_dir = work / f"sql-{round_}"
    db = Database(f"sqlite+aiosqlite:///{path}", name="orders", sql_trace_dir=trace_dir)
    log = SqlSagaLog(db, project=domain.project)
    async with db.read() as conn:  # open the connection: its PRAGMAs are not the sagas'
        await store.by_id(conn, "none")
    skip = len(statements(trace_dir))
    started = time.process_time()
    for n in range(count):
        await one_saga(db, log, n, round_)
    spent = time.process_time() - started
    await db.close()
    ran = statements(trace_dir)[skip:]
    return spent, len(ran), replay(copy, ran)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sagas", type=int, default=400, help="sagas per round (default 400)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, each on a new database; medians (default 3)")
    add_smoke(parser)
    args = parser.parse_args()
    if args.smoke:
        args.sagas, args.rounds = 20, 1
    results = []
    with tempfile.TemporaryDirectory(prefix="meshop-bench-database-") as tmp:
        for round_ in range(args.rounds):
            results.append(asyncio.run(measure(Path(tmp), args.sagas, round_)))
    layer = statistics.median(r[0] for r in results) / args.sagas
    count = statistics.median(r[1] for r in results) / args.sagas
    alone = statistics.median(r[2] for r in results) / args.sagas
    table(
        f"one checkout's saga as orders writes it ({args.sagas} sagas x {args.rounds} rounds, medians)",
        [
            ("statements SQLite ran per saga", count),
            ("CPU ms per saga, through Database", layer * 1000),
            ("CPU ms per saga, replayed with sqlite3 alone", alone * 1000),
            ("CPU us per statement, through Database", layer / count * 1e6),
            ("the layer / sqlite3 alone", layer / alone),
        ],
        ["", "value"],
    )


if __name__ == "__main__":
    main()
