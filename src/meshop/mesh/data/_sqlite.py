"""SQLite on the event loop thread, without blocking it on locks.

SQLAlchemy's aiosqlite adapter costs ~0.5 ms per statement here (thread hops and
greenlet switches) while a statement itself takes tens of microseconds: measured, a
one-row read transaction took 0.85 ms through the adapter and 0.14 ms with the plain
`sqlite3` driver (docs/decisions/0004-sqlite-inline.md). So statements run inline on the
loop thread. What could block — waiting for another process's write lock — never does:
the busy timeout is 0, and `BEGIN` is retried with an `await asyncio.sleep` backoff.
Once `BEGIN IMMEDIATE` succeeds this connection holds the write lock, and in WAL mode
readers never wait, so no statement inside a transaction waits on a lock.

A statement executed many times (one built once, at module level) skips SQLAlchemy's
execution path: it is compiled once and run on the `sqlite3` connection itself, its
parameters and columns through the same type processors SQLAlchemy would apply, its
errors raised as SQLAlchemy's (`Plan`, docs/decisions/0036). A statement SQLAlchemy must
do more for (Python-side defaults, expanding `IN`, implicit `RETURNING`) goes the usual way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sqlite3
import time
import weakref
from collections import namedtuple
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, TextIO, TypeVar, cast

from sqlalchemy import create_engine, event
from sqlalchemy.engine import URL, Connection, CursorResult, Dialect, Engine
from sqlalchemy.exc import DBAPIError, MultipleResultsFound, NoResultFound
from sqlalchemy.sql import Delete, Insert, Select, TextClause, Update
from sqlalchemy.sql.base import Executable

T = TypeVar("T")

LOCK_TIMEOUT_S = 30.0
#: Connections kept checked out between transactions (the pool's `pool_size`).
IDLE_CONNECTIONS = 2


class InlineConnection:
    """The subset of `Conn` the stores use, over a synchronous connection."""

    __slots__ = ("_raw", "sync_connection")

    def __init__(self, connection: Connection, raw: sqlite3.Connection) -> None:
        self.sync_connection = connection
        self._raw = raw

    async def execute(self, statement: Executable, parameters: Any = None) -> CursorResult[Any]:
        if (
            type(parameters) is dict
            and (plan := Plan.of(statement, self.sync_connection.dialect, parameters)) is not None
            and plan.accepts(parameters)
        ):
            # `Rows` is what the stores read of a `CursorResult` (tests/mesh/test_sqlite_plan.py)
            return cast("CursorResult[Any]", plan.run(self._raw, parameters))
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
                yield InlineConnection(conn, raw)
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


class Rows:
    """A planned statement's result: what the stores read of SQLAlchemy's `CursorResult`."""

    __slots__ = ("_rows", "returns_rows", "rowcount")

    def __init__(self, rows: list[Any], rowcount: int, *, returns_rows: bool) -> None:
        self._rows = rows
        self.rowcount = rowcount
        self.returns_rows = returns_rows

    def __iter__(self) -> Iterator[Any]:
        return iter(self._rows)

    def all(self) -> list[Any]:
        return self._rows

    def first(self) -> Any:
        return self._rows[0] if self._rows else None

    def one_or_none(self) -> Any:
        if len(self._rows) > 1:
            raise MultipleResultsFound("Multiple rows were found when one or none was required")
        return self.first()

    def one(self) -> Any:
        if not self._rows:
            raise NoResultFound("No row was found when one was required")
        return self.one_or_none()

    def scalar(self) -> Any:
        return self._rows[0][0] if self._rows else None

    def scalars(self) -> Rows:
        """Each row's first column, read as SQLAlchemy's `ScalarResult` is (`all`, `first`, ...)."""
        return Rows([row[0] for row in self._rows], self.rowcount, returns_rows=True)


def _row_type(names: list[str]) -> type[tuple[Any, ...]] | None:
    """Rows as SQLAlchemy's are read here: by index, by attribute, and `_mapping`."""
    if any(name in _TUPLE_ATTRIBUTES for name in names):  # SQLAlchemy's Row.count is the method
        return None
    try:
        base = namedtuple("Row", names)  # type: ignore[misc]
    except ValueError:  # a name that is not an identifier, or starts with _: not planned
        return None

    def mapping(row: tuple[Any, ...]) -> dict[str, Any]:
        return dict(zip(names, row, strict=True))

    return type("Row", (base,), {"__slots__": (), "_mapping": property(mapping)})


_PLANS: weakref.WeakKeyDictionary[Executable, dict[tuple[str, ...], Plan | None]] = weakref.WeakKeyDictionary()
#: Plans kept per statement (an INSERT or UPDATE has one per set of parameter names).
_PLANS_PER_STATEMENT = 16


class Plan:
    """A statement compiled once for SQLite, run on the `sqlite3` connection.

    SQLAlchemy spends ~15 µs per execution of even a prebuilt statement (its execution
    context, parameter and result processing) where `sqlite3` spends 3–4 (decision 0036).
    A plan does what that path would for the statements it accepts: the compiled SQL,
    positional parameters through each bind's processor, columns through each result
    processor, rows readable by name, DBAPI errors wrapped as SQLAlchemy's.
    """

    __slots__ = ("_binds", "_processors", "_row", "_sql", "dialect")

    def __init__(
        self,
        sql: str,
        binds: list[tuple[str, Any, Callable[[Any], Any] | None]],
        row: type[tuple[Any, ...]] | None,
        processors: list[Callable[[Any], Any] | None] | None,
        dialect: Dialect,
    ) -> None:
        self._sql = sql
        self._binds = binds
        self._row = row
        self._processors = processors
        self.dialect = dialect

    @classmethod
    def of(cls, statement: Executable, dialect: Dialect, parameters: dict[str, Any]) -> Plan | None:
        """`statement`'s plan for these parameters' names, made on first use (None: SQLAlchemy runs it).

        An INSERT or UPDATE sets the columns its parameters name, as SQLAlchemy compiles it,
        so it has a plan per set of names; any other statement has one. SQL text (`text()`)
        is planned when it writes and returns no rows (no RETURNING): the columns of text
        that does are not known before it runs.
        """
        try:
            plans = _PLANS[statement]
        except KeyError:  # first seen: planned if executed again (one built per call never is)
            _PLANS[statement] = {}
            return None
        except TypeError:  # not weakly referable: not a statement object
            return None
        keys = tuple(sorted(parameters)) if isinstance(statement, Insert | Update) else ()
        try:
            return plans[keys]
        except KeyError:
            if len(plans) >= _PLANS_PER_STATEMENT:  # names that vary without bound: not planned
                return None
            plan = plans[keys] = cls._make(statement, dialect, keys)
            return plan

    @classmethod
    def _make(cls, statement: Executable, dialect: Dialect, keys: tuple[str, ...]) -> Plan | None:
        if isinstance(statement, TextClause):
            if not _WRITES_NO_ROWS.match(statement.text) or "RETURNING" in statement.text.upper():
                return None  # SQL text that may return rows: its columns are known only once run
        elif not isinstance(statement, Select | Insert | Update | Delete):
            return None
        compiled: Any = statement.compile(dialect=dialect, column_keys=list(keys))
        sql = compiled.string
        if (
            "POSTCOMPILE" in sql
            or getattr(compiled, "insert_prefetch", None)  # SQLAlchemy computes values per execution
            or getattr(compiled, "update_prefetch", None)
            or getattr(compiled, "implicit_returning", None)  # ... or reads some back (a plan has no
            # `inserted_primary_key` nor `returned_defaults`; `postfetch` only names what those would)
            or compiled.positiontup is None
        ):
            return None
        binds = []
        for key in compiled.positiontup:
            bind = compiled.binds[key]
            if bind.expanding or bind.callable is not None:
                return None
            default = _REQUIRED if bind.required else bind.value
            binds.append((key, default, bind.type._cached_bind_processor(dialect)))
        row, processors = None, None
        if compiled._result_columns:
            columns = compiled._result_columns
            row = _row_type([column.keyname for column in columns])
            if row is None:
                return None
            found = [column.type._cached_result_processor(dialect, None) for column in columns]
            processors = found if any(found) else None
        return cls(sql, binds, row, processors, dialect)

    def accepts(self, parameters: dict[str, Any]) -> bool:
        """Whether `parameters` give every value the statement needs (else SQLAlchemy says what is missing)."""
        return all(default is not _REQUIRED or key in parameters for key, default, _ in self._binds)

    def run(self, raw: sqlite3.Connection, parameters: dict[str, Any]) -> Rows:
        values = []
        for key, default, process in self._binds:
            value = parameters.get(key, default)
            values.append(value if process is None else process(value))
        try:
            cursor = raw.execute(self._sql, values)
            fetched = cursor.fetchall() if self._row is not None else []
        except sqlite3.Error as exc:
            raise DBAPIError.instance(self._sql, values, exc, sqlite3.Error, dialect=self.dialect) from exc
        if self._row is None:
            return Rows([], cursor.rowcount, returns_rows=False)
        make, processors = self._row._make, self._processors  # type: ignore[attr-defined]
        if processors is None:
            rows = [make(found) for found in fetched]
        else:
            rows = [
                make([value if p is None else p(value) for p, value in zip(processors, found, strict=True)])
                for found in fetched
            ]
        return Rows(rows, cursor.rowcount, returns_rows=True)


_REQUIRED: Any = object()
#: SQL text a plan may run: a write whose answer is its row count (no RETURNING).
_WRITES_NO_ROWS = re.compile(r"\s*(INSERT|UPDATE|DELETE)\b", re.IGNORECASE)
_TUPLE_ATTRIBUTES = frozenset(dir(tuple))
