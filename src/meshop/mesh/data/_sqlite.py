"""SQLite on the event loop thread, without blocking it on locks.

SQLAlchemy's aiosqlite adapter costs ~0.5 ms per statement here (thread hops and
greenlet switches) while a statement itself takes tens of microseconds: measured, a
one-row read transaction took 0.85 ms through the adapter and 0.14 ms with the plain
`sqlite3` driver (docs/decisions/0004-sqlite-inline.md). So statements run inline on the
loop thread. What could block — waiting for another process's write lock — never does:
the busy timeout is 0, and `BEGIN` is retried with an `await asyncio.sleep` backoff.
Once `BEGIN IMMEDIATE` succeeds this connection holds the write lock, and in WAL mode
readers never wait, so no statement inside a transaction waits on a lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TextIO, TypeVar

from sqlalchemy import create_engine, event
from sqlalchemy.engine import URL, Connection, CursorResult, Engine
from sqlalchemy.sql.base import Executable

T = TypeVar("T")

LOCK_TIMEOUT_S = 30.0
#: Connections kept checked out between transactions (the pool's `pool_size`).
IDLE_CONNECTIONS = 2


class InlineConnection:
    """The subset of `Conn` the stores use, over a synchronous connection."""

    __slots__ = ("sync_connection",)

    def __init__(self, connection: Connection) -> None:
        self.sync_connection = connection

    async def execute(self, statement: Executable, parameters: Any = None) -> CursorResult[Any]:
        return self.sync_connection.execute(statement, parameters)

    async def scalar(self, statement: Executable, parameters: Any = None) -> Any:
        return self.sync_connection.scalar(statement, parameters)

    async def run_sync(self, fn: Callable[..., T], *args: Any) -> T:
        return fn(self.sync_connection, *args)

    @property
    def info(self) -> dict[Any, Any]:
        return self.sync_connection.info


class InlineSqlite:
    """A SQLite database whose transactions run on the event loop thread."""

    def __init__(self, url: URL, *, trace: Path | None = None) -> None:
        self._trace_out: TextIO | None = None
        self._idle: list[Connection] = []
        self.engine: Engine = create_engine(
            url.set(drivername="sqlite"),
            # Every transaction ends in COMMIT or ROLLBACK below; no reset on check-in.
            pool_reset_on_return=None,
            # Statements never wait inside a transaction, so few connections are ever
            # checked out at once; each holds its own page cache, which counts as RSS.
            pool_size=IDLE_CONNECTIONS,
            max_overflow=6,
            connect_args={"timeout": 0, "isolation_level": None, "check_same_thread": False},
        )

        @event.listens_for(self.engine, "connect")
        def on_connect(dbapi_connection: sqlite3.Connection, _record: Any) -> None:
            # cache_size: 1 MiB of pages per connection (SQLite defaults to 2 MiB); the OS page
            # cache still holds the file, and a service database is small.
            pragmas = (
                "journal_mode=WAL",
                "synchronous=NORMAL",
                "foreign_keys=ON",
                "busy_timeout=0",
                "cache_size=-1024",
            )
            for pragma in pragmas:
                dbapi_connection.execute(f"PRAGMA {pragma}")
            if trace is not None:
                dbapi_connection.set_trace_callback(self._tracer(trace))

    def _tracer(self, path: Path) -> Callable[[str], None]:
        """Append each statement, as SQLite expanded it (parameters in place), to `path`: one
        JSON string per line, so a statement's own line breaks cannot split it."""
        if self._trace_out is None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._trace_out = path.open("a", buffering=1, encoding="utf-8")  # line-buffered: whole lines
        out = self._trace_out

        def write(statement: str) -> None:
            out.write(json.dumps(statement) + "\n")

        return write

    @contextlib.asynccontextmanager
    async def transaction(self, *, write: bool) -> AsyncIterator[InlineConnection]:
        conn = self._idle.pop() if self._idle else self.engine.connect()
        raw = conn.connection.dbapi_connection
        assert isinstance(raw, sqlite3.Connection)
        try:
            await _begin(raw, "BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield InlineConnection(conn)
            except BaseException:
                conn.rollback()
                if raw.in_transaction:
                    raw.rollback()
                raise
            conn.commit()
            if raw.in_transaction:
                raw.commit()
        except BaseException:
            conn.close()  # not kept: back to the pool, as every connection went before 0032
            raise
        self._release(conn)

    def _release(self, conn: Connection) -> None:
        """Keep `conn` checked out for the next transaction (up to the pool's size), else return it.

        A pool checkout and check-in cost more than a short transaction's statements; idle
        connections kept here are what the pool would have kept anyway (`pool_size`).
        """
        if len(self._idle) < IDLE_CONNECTIONS and not conn.invalidated:
            self._idle.append(conn)
        else:
            conn.close()

    def dispose(self) -> None:
        while self._idle:
            self._idle.pop().close()
        self.engine.dispose()
        if self._trace_out is not None:
            self._trace_out.close()


async def _begin(raw: sqlite3.Connection, sql: str) -> None:
    delay = 0.001
    deadline = time.monotonic() + LOCK_TIMEOUT_S
    while True:
        try:
            raw.execute(sql)
            return
        except sqlite3.OperationalError as exc:
            if ("locked" not in str(exc) and "busy" not in str(exc)) or time.monotonic() > deadline:
                raise
        await asyncio.sleep(delay)  # another process holds the lock: wait without blocking
        delay = min(delay * 2, 0.05)
