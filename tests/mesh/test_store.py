"""Database creation, migrations and one-time init under a lock, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event

import meshop.services.inventory.app as inventory_app
from meshop.mesh.data.availability import unavailable
from meshop.mesh.data.store import Database, announce_on_commit, head_revision
from meshop.mesh.service.settings import Settings
from meshop.mesh.testing import eventually
from meshop.runtime.nats_server import free_port

pytestmark = pytest.mark.integration

MIGRATIONS = Path(inventory_app.__file__).parent / "migrations"


async def test_a_missing_database_is_created_and_migrated_to_head(db_url: str) -> None:
    db = Database(db_url, name="inventory")
    try:
        await db.ensure_exists()
        await db.migrate(MIGRATIONS)
        await db.migrate(MIGRATIONS)  # already at head: nothing happens
        async with db.read() as conn:
            version = await conn.scalar(sa.text("SELECT version_num FROM alembic_version_inventory"))
            tables = await conn.run_sync(lambda c: sa.inspect(c).get_table_names())
        assert version == head_revision(MIGRATIONS) == "inventory_0002"
        assert {"stock", "reservations", "outbox", "alembic_version_inventory"} <= set(tables)
    finally:
        await db.close()


async def test_connections_handed_out_keep_commits_durable(db_url: str) -> None:
    """SQLite: WAL and synchronous NORMAL or stronger; PostgreSQL: fsync and synchronous commits."""
    db = Database(db_url, name="inventory")
    try:
        await db.ensure_exists()
        for transaction in (db.begin, db.read, db.begin):  # a pooled connection keeps them too
            async with transaction() as conn:
                if db.is_sqlite:
                    assert await conn.scalar(sa.text("PRAGMA journal_mode")) == "wal"
                    assert await conn.scalar(sa.text("PRAGMA synchronous")) >= 1  # 1 NORMAL, 2 FULL, 3 EXTRA
                else:
                    assert await conn.scalar(sa.text("SHOW fsync")) == "on"
                    assert await conn.scalar(sa.text("SHOW synchronous_commit")) == "on"
    finally:
        await db.close()


async def test_replicas_starting_together_initialise_once(db_url: str) -> None:
    """Three 'replicas' race through create → migrate → seed; the seed runs once."""
    seeded: list[int] = []

    async def replica(n: int) -> None:
        db = Database(db_url, name="inventory")
        try:
            await db.ensure_exists()
            async with db.init_lock():
                await db.migrate(MIGRATIONS)
                async with db.begin() as conn:
                    if not await conn.scalar(sa.text("SELECT count(*) FROM stock")):
                        await asyncio.sleep(0.05)  # widen the race window
                        await conn.execute(sa.text("INSERT INTO stock VALUES ('SKU-1', 5, 0, 0)"))
                        seeded.append(n)
        finally:
            await db.close()

    await asyncio.gather(*(replica(n) for n in range(3)))
    assert len(seeded) == 1


async def test_commit_listeners_hear_of_a_marked_transaction_once_it_commits_and_never_on_rollback(
    db_url: str,
) -> None:
    db = Database(db_url, name="announce")
    heard: list[str] = []

    def listener() -> None:
        heard.append("committed")

    db.add_commit_listener(listener)
    try:
        await db.ensure_exists()
        async with db.begin() as conn:
            await conn.execute(sa.text("CREATE TABLE things (n integer)"))
        assert heard == []  # not marked
        async with db.begin() as conn:
            await conn.execute(sa.text("INSERT INTO things VALUES (1)"))
            announce_on_commit(conn)
            assert heard == []  # not before the commit
        assert heard == ["committed"]
        with pytest.raises(RuntimeError):  # noqa: PT012 - the rollback is what is tested
            async with db.begin() as conn:
                await conn.execute(sa.text("INSERT INTO things VALUES (2)"))
                announce_on_commit(conn)
                raise RuntimeError("the change failed")
        for _ in range(3):  # the rolled-back mark went with its transaction, not with the pooled connection
            async with db.begin() as conn:
                await conn.execute(sa.text("INSERT INTO things VALUES (3)"))
        assert heard == ["committed"]
        db.remove_commit_listener(listener)
        async with db.begin() as conn:
            announce_on_commit(conn)
        assert heard == ["committed"]
    finally:
        await db.close()


async def test_a_pooled_connection_the_server_closed_is_replaced_when_checked_out(db_url: str) -> None:
    """PostgreSQL restarted, or a backend terminated: the next transaction gets a new connection."""
    if db_url.startswith("sqlite"):
        pytest.skip("SQLite has no server to close a connection")
    db = Database(db_url, name="closed")
    admin = Database(db_url, name="closed")
    pooled: list[Any] = []  # the asyncpg connections back in the pool
    event.listen(db._engine.sync_engine, "checkin", lambda _c, record: pooled.append(record.driver_connection))  # type: ignore[union-attr]
    try:
        await db.ensure_exists()
        async with db.read() as conn:  # one connection, now idle in the pool
            assert await conn.scalar(sa.text("SELECT 1")) == 1
        async with admin.read() as conn:
            terminated = sa.text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            assert await conn.scalar(terminated) == 1
        await eventually(lambda: pooled and all(c.is_closed() for c in pooled))  # the client read the close
        async with db.read() as conn:  # not `ConnectionDoesNotExistError`
            assert await conn.scalar(sa.text("SELECT 1")) == 1
    finally:
        await db.close()
        await admin.close()


async def test_a_server_away_is_told_apart_from_work_that_failed(db_url: str) -> None:
    """`unavailable`: refused, or the connection dropped (a restart, a kill -9); not a constraint or a bug."""
    if db_url.startswith("sqlite"):
        pytest.skip("SQLite has no server to be away")
    db = Database(db_url, name="away")
    nowhere = Database(str(sa.make_url(db_url).set(port=free_port())), name="away")  # nothing listens there
    try:
        await db.ensure_exists()
        with pytest.raises(OSError, match="Connect call failed") as refused:
            async with nowhere.begin() as conn:
                await conn.execute(sa.text("SELECT 1"))
        assert unavailable(refused.value), repr(refused.value)
        with pytest.raises(sa.exc.DBAPIError, match="terminating connection") as dropped:
            async with db.begin() as conn:  # its backend ends as in a shutdown, mid-transaction
                await conn.execute(sa.text("SELECT pg_terminate_backend(pg_backend_pid())"))
        assert unavailable(dropped.value), repr(dropped.value)
        async with db.begin() as conn:
            await conn.execute(sa.text("CREATE TABLE IF NOT EXISTS once (id int PRIMARY KEY)"))
            await conn.execute(sa.text("INSERT INTO once VALUES (1)"))
        with pytest.raises(sa.exc.IntegrityError) as duplicate:
            async with db.begin() as conn:
                await conn.execute(sa.text("INSERT INTO once VALUES (1)"))
        assert not unavailable(duplicate.value)
        with pytest.raises(sa.exc.ProgrammingError) as wrong:
            async with db.begin() as conn:
                await conn.execute(sa.text("SELECT no_such_column FROM once"))
        assert not unavailable(wrong.value)
        assert not unavailable(ValueError("a handler's own bug"))
    finally:
        await db.close()
        await nowhere.close()


async def test_a_transaction_cancelled_mid_statement_ends_in_cancellation(db_url: str) -> None:
    """Not in an error of the connection the cancellation invalidated (PostgreSQL), which a loop would catch."""
    db = Database(db_url, name="cancelled")
    statement_started = asyncio.Event()

    async def transaction() -> None:
        async with db.begin() as conn:
            statement_started.set()
            if db.is_sqlite:  # statements run inline there: cancellation comes between them
                await asyncio.sleep(30)
            await conn.execute(sa.text("SELECT pg_sleep(30)"))

    async def sleeping_on_the_server() -> bool:
        async with observer.read() as conn:
            active = sa.text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND state = 'active' AND query = 'SELECT pg_sleep(30)'"
            )
            return bool(await conn.scalar(active))

    observer = Database(db_url, name="cancelled")
    try:
        await db.ensure_exists()
        running = asyncio.create_task(transaction())
        await statement_started.wait()  # on SQLite, in its sleep now
        if not db.is_sqlite:
            await eventually(sleeping_on_the_server, within_s=10)
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
    finally:
        await db.close()
        await observer.close()


def test_database_url_precedence(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    assert settings.database_url_for("orders") == f"sqlite+aiosqlite:///{(tmp_path / 'orders.db').resolve()}"
    server = Settings(data_dir=tmp_path, database_url="postgresql://root@db:5432/")
    assert server.database_url_for("orders") == "postgresql+asyncpg://root@db:5432/meshop_orders"
    own = Settings(
        database_url="postgresql://x@db/", service_database_urls={"orders": "postgresql://o@other/orders_db"}
    )
    assert own.database_url_for("orders") == "postgresql+asyncpg://o@other/orders_db"
    assert own.database_url_for("users") == "postgresql+asyncpg://x@db/meshop_users"


async def test_a_traced_sqlite_database_writes_every_statement_with_its_parameters(tmp_path: Path) -> None:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 't.db'}", name="t", sql_trace_dir=tmp_path / "sql")
    try:
        async with db.begin() as conn:
            await conn.execute(sa.text("CREATE TABLE t (a INTEGER, b TEXT)"))
            await conn.execute(sa.text("INSERT INTO t VALUES (:a, :b)"), {"a": 1, "b": "it's"})
    finally:
        await db.close()
    (trace,) = (tmp_path / "sql").iterdir()
    assert trace.name.startswith("t.")
    statements = [json.loads(line) for line in trace.read_text().splitlines()]
    assert statements[-3:] == ["CREATE TABLE t (a INTEGER, b TEXT)", "INSERT INTO t VALUES (1, 'it''s')", "COMMIT"]
    assert "BEGIN IMMEDIATE" in statements
