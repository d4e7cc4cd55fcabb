"""Each service's own database: engine, creation, migrations and one-time init.

SQLite by default (statements inline on the loop: see `_sqlite`), PostgreSQL (asyncpg) in
production; never shared between
services. Migrations are Alembic's, one version table per service. One-time work
(creating the database, migrating, seeding) runs under a lock, so replicas that start
together do it once: `flock` beside a SQLite file, an advisory lock on PostgreSQL.

A transaction can ask to be announced: `announce_on_commit(conn)` marks it, and once it
has committed (never after a rollback) the database calls its commit listeners. The
outbox marks every transaction that writes an event, so its relay publishes at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
import re
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, Protocol, TypeVar

import sqlalchemy as sa
from sqlalchemy import event, inspect, text
from sqlalchemy.engine import Connection, CursorResult, make_url
from sqlalchemy.exc import DisconnectionError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool
from sqlalchemy.sql.base import Executable

from meshop.mesh.data._sqlite import InlineSqlite
from meshop.mesh.errors import ConfigError, MeshError

_ENV_DIR = Path(__file__).parent / "_migration_env"
#: The key of a transaction's mark in its connection's `info` (see `announce_on_commit`).
_ANNOUNCE = "meshop.announce_on_commit"

T = TypeVar("T")


class Conn(Protocol):
    """A connection inside a transaction: `Conn` on PostgreSQL, inline on SQLite."""

    async def execute(self, statement: Executable, parameters: Any = None) -> CursorResult[Any]: ...

    async def scalar(self, statement: Executable, parameters: Any = None) -> Any: ...

    async def run_sync(self, fn: Callable[..., T], *args: Any) -> T: ...

    @property
    def info(self) -> dict[Any, Any]:
        """State kept with the underlying connection (SQLAlchemy's `Connection.info`)."""
        ...


def _replace_if_closed(_dbapi_connection: Any, record: Any, _proxy: Any) -> None:
    """A pooled connection the server closed (a restart, `pg_terminate_backend`) is replaced
    when checked out, as `pool_pre_ping` would, without its round trips (decision 0039).

    asyncpg knows from its socket: the server's FIN has been read by the time the connection
    is checked out again. The pool retries the checkout with a new connection.
    """
    if record.driver_connection.is_closed():
        raise DisconnectionError("the server closed this pooled connection")


def announce_on_commit(conn: Conn) -> None:
    """Have the database call its commit listeners once `conn`'s transaction commits (not if it rolls back)."""
    conn.info[_ANNOUNCE] = True


class Database:
    """One service's database."""

    def __init__(self, url: str, *, name: str, pool_size: int = 5, sql_trace_dir: Path | None = None) -> None:
        """`sql_trace_dir` (SQLite only): where every statement run is written (`Settings.sql_trace_dir`)."""
        self.url = make_url(url)
        self.name = name
        self.is_sqlite = self.url.get_backend_name() == "sqlite"
        self._sqlite: InlineSqlite | None = None
        self._engine: AsyncEngine | None = None
        if self.is_sqlite:
            self._sqlite = InlineSqlite(
                self.url, trace=sql_trace_dir / f"{name}.{os.getpid()}.sql" if sql_trace_dir else None
            )
            self._write_lock = asyncio.Lock()
        elif self.url.get_backend_name() == "postgresql":
            self._engine = create_async_engine(self.url, pool_size=pool_size, max_overflow=pool_size)
            event.listen(self._engine.sync_engine, "checkout", _replace_if_closed)
        else:
            raise ConfigError(f"{name}: unsupported database {self.url.get_backend_name()!r}")
        self._commit_listeners: list[Callable[[], None]] = []

    def add_commit_listener(self, listener: Callable[[], None]) -> None:
        """Call `listener` after each transaction marked by `announce_on_commit` commits.

        It is called in the committing task, right after the commit: it must be quick and
        must not raise (the outbox relay's sets an `asyncio.Event`).
        """
        self._commit_listeners.append(listener)

    def remove_commit_listener(self, listener: Callable[[], None]) -> None:
        self._commit_listeners.remove(listener)

    @contextlib.asynccontextmanager
    async def begin(self) -> AsyncIterator[Conn]:
        """A write transaction.

        On SQLite, writers in this process take turns on an asyncio lock, then take the
        database's write lock with `BEGIN IMMEDIATE` (waiting for other processes without
        blocking the loop), so a transaction never fails half-way on a lock upgrade.
        """
        if self._sqlite is not None:
            async with self._write_lock, self._announced(self._sqlite.transaction(write=True)) as conn:
                yield conn
            return
        assert self._engine is not None
        async with self._announced(self._engine.begin()) as aconn:
            yield aconn

    @contextlib.asynccontextmanager
    async def read(self) -> AsyncIterator[Conn]:
        """A read-only unit of work (one consistent snapshot)."""
        # Announced too: on PostgreSQL it commits what it wrote, were it handed to `emit`.
        if self._sqlite is not None:
            async with self._announced(self._sqlite.transaction(write=False)) as conn:
                yield conn
            return
        assert self._engine is not None
        async with self._announced(self._engine.begin()) as aconn:
            yield aconn

    @contextlib.asynccontextmanager
    async def _announced(self, transaction: AbstractAsyncContextManager[Conn]) -> AsyncIterator[Conn]:
        """`transaction`, after whose commit the listeners are called if it was marked."""
        async with transaction as conn:
            # Taken now: after a statement was cancelled, reading `conn.info` would raise
            # PendingRollbackError and hide the CancelledError (the connection is invalid).
            info = conn.info
            try:
                yield conn
            finally:  # the mark lives on a pooled connection: never let it reach the next transaction
                marked = info.pop(_ANNOUNCE, False)
        if marked:  # reached only once the transaction committed
            for listener in self._commit_listeners:
                listener()

    async def close(self) -> None:
        if self._sqlite is not None:
            self._sqlite.dispose()
        if self._engine is not None:
            await self._engine.dispose()

    async def ensure_exists(self) -> None:
        """Create the database if missing (PostgreSQL: on its server; SQLite: its folder)."""
        if self.is_sqlite:
            if self.url.database and self.url.database != ":memory:":
                Path(self.url.database).parent.mkdir(parents=True, exist_ok=True)
            return
        database = self.url.database
        if not database:
            raise ConfigError(f"{self.name}: the database URL names no database")
        admin = create_async_engine(self.url.set(database="postgres"), poolclass=NullPool, isolation_level="AUTOCOMMIT")
        try:
            async with admin.connect() as conn:
                # Replicas starting together: one creates, the others wait and find it.
                key = _lock_key(f"meshop-create:{database}")
                await conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
                try:
                    exists = await conn.scalar(text("SELECT 1 FROM pg_database WHERE datname = :d"), {"d": database})
                    if not exists:
                        await conn.execute(text(f'CREATE DATABASE "{_identifier(database)}"'))
                finally:
                    await conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
        finally:
            await admin.dispose()

    @contextlib.asynccontextmanager
    async def init_lock(self) -> AsyncIterator[None]:
        """Hold the service's one-time-initialisation lock (across processes)."""
        if self.is_sqlite:
            path = Path(f"{self.url.database}.init-lock")
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                await asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)  # closing releases the lock
            return
        key = _lock_key(f"meshop-init:{self.name}")
        assert self._engine is not None
        async with self._engine.connect() as conn:
            await conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
            await conn.commit()
            try:
                yield
            finally:
                await conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                await conn.commit()

    async def migrate(self, versions: Path) -> None:
        """Apply the service's Alembic migrations in `versions` up to head.

        When the database is already at head (every start but the first), nothing is
        imported; otherwise Alembic runs in a child process, so the service process
        never carries Alembic's memory (the RSS budget is 80 MB per process).
        """
        if await self.current_revision() == head_revision(versions):
            return
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "meshop.mesh.data.migrate",
            self.url.render_as_string(hide_password=False),
            str(versions),
            self.name,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output, _ = await process.communicate()
        if process.returncode != 0:
            raise MeshError(f"{self.name}: migration failed:\n{output.decode(errors='replace')[-2000:]}")

    async def current_revision(self) -> str | None:
        """The Alembic revision the database is at (None before the first migration)."""
        table = f"alembic_version_{self.name}"
        async with self.read() as conn:
            exists = await conn.run_sync(lambda c: inspect(c).has_table(table))
            if not exists:
                return None
            value = await conn.scalar(text(f'SELECT version_num FROM "{table}"'))
            return str(value) if value is not None else None


_REVISION = re.compile(r"^(down_)?revision\s*(?::[^=]*)?=\s*['\"]?([^'\"\s]+)['\"]?", re.MULTILINE)


def head_revision(versions: Path) -> str | None:
    """The single head of a linear chain of migrations (the revision nothing revises)."""
    revisions: set[str] = set()
    revised: set[str] = set()
    for path in versions.glob("*.py"):
        for down, value in _REVISION.findall(path.read_text()):
            (revised if down else revisions).add(value)
    heads = revisions - revised
    return heads.pop() if len(heads) == 1 else None


async def run_migrations(url: str, versions: Path, name: str) -> None:
    """Upgrade the database at `url` to head (the migrate child process's job)."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("path_separator", "os")
    config.set_main_option("script_location", str(_ENV_DIR))
    config.set_main_option("version_locations", str(versions))
    config.set_main_option("version_table", f"alembic_version_{name}")

    def upgrade(conn: Connection) -> None:
        config.attributes["connection"] = conn
        command.upgrade(config, "head")

    engine = create_async_engine(url, poolclass=NullPool)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(upgrade)
    finally:
        await engine.dispose()


def _lock_key(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


def _identifier(name: str) -> str:
    if not name.replace("_", "").isalnum():
        raise ConfigError(f"invalid database name {name!r}")
    return name


async def insert_unless_present(
    db: Database, table: sa.Table, where: sa.ColumnElement[bool], values: dict[str, Any]
) -> Any:
    """The row matching `where`, after inserting `values` if there was none.

    Made for tombstones: an insert that loses a race on a unique key to a concurrent one
    is not an error; the winner's row is returned.
    """
    async with db.read() as conn:
        row = (await conn.execute(sa.select(table).where(where))).first()
    if row is not None:
        return row
    try:
        async with db.begin() as conn:
            await conn.execute(table.insert().values(**values))
    except IntegrityError:
        pass
    async with db.read() as conn:
        return (await conn.execute(sa.select(table).where(where))).first()
