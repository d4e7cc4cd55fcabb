"""Statements SQLite runs without SQLAlchemy's execution path answer as they would through it."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from meshop.mesh.data._sqlite import Plan
from meshop.mesh.data.store import Database

metadata = sa.MetaData()
things = sa.Table(
    "things",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("n", sa.Integer, nullable=False),
    sa.Column("ratio", sa.Float),
    sa.Column("flag", sa.Boolean, nullable=False),
    sa.Column("at", sa.DateTime),
    sa.Column("note", sa.Text),
)
stamped = sa.Table(
    "stamped",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("at", sa.Float, default=lambda: 1.5),  # a Python-side default: SQLAlchemy's to fill in
)

AT = dt.datetime(2026, 12, 7, 20, 0, 0, 123456)
ROWS = [
    {"id": "a", "n": 1, "ratio": 0.5, "flag": True, "at": AT, "note": None},
    {"id": "b", "n": 2, "ratio": None, "flag": False, "at": None, "note": "two"},
]

BY_ID = sa.select(things).where(things.c.id == sa.bindparam("b_id"))
FLAGGED = sa.select(things.c.id, things.c.at).where(things.c.flag == sa.true(), things.c.n >= 1).order_by(things.c.id)
FIRST = sa.select(things.c.id).order_by(things.c.id).limit(sa.bindparam("b_limit"))
BUMP = (
    things.update()
    .where(things.c.id == sa.bindparam("b_id"))
    .values(n=things.c.n + sa.bindparam("b_by", type_=sa.Integer))
    .returning(things.c.n, things.c.flag)
)
SET = things.update().where(things.c.id == sa.bindparam("b_id"))  # the columns: the parameters'
INSERT = things.insert()
DELETE = things.delete().where(things.c.id == sa.bindparam("b_id"))
COUNTED = sa.select(sa.func.count().label("count")).select_from(things)  # Row.count is tuple's method
ANY_OF = sa.select(things.c.id).where(things.c.id.in_(sa.bindparam("b_ids", expanding=True)))
UPSERT_TEXT = sa.text(
    "INSERT INTO things (id, n, flag) VALUES (:id, :n, :flag) ON CONFLICT (id) DO UPDATE SET n = things.n + excluded.n"
)
SELECT_TEXT = sa.text("SELECT id, n FROM things WHERE n >= :low ORDER BY id")
RETURNING_TEXT = sa.text("UPDATE things SET n = n + 1 WHERE id = :id RETURNING n")


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'plan.db'}", name="plan")
    async with database.begin() as conn:
        await conn.run_sync(metadata.create_all)
    yield database
    await database.close()


async def both(db: Database, statement: sa.Executable, parameters: dict[str, Any]) -> tuple[Any, Any]:
    """`statement` run planned and through SQLAlchemy, each in a transaction rolled back
    after, so both see the same rows."""
    answers = []
    async with db.read() as conn:  # seen (a plan is made for a statement seen before)
        Plan.of(statement, conn.sync_connection.dialect, parameters)  # type: ignore[attr-defined]
    for planned in (True, False):
        with pytest.raises(_RolledBack):  # noqa: PT012 - the rollback keeps the rows for the other
            async with db.begin() as conn:
                for name, row in (("a", ROWS[0]), ("b", ROWS[1])):
                    conn.sync_connection.execute(INSERT, {**row, "id": name})  # type: ignore[attr-defined]
                if planned:
                    answers.append(await _answer(await conn.execute(statement, parameters)))
                else:
                    result = conn.sync_connection.execute(statement, parameters)  # type: ignore[attr-defined]
                    answers.append(await _answer(result))
                raise _RolledBack
    return answers[0], answers[1]


class _RolledBack(Exception):
    pass


async def _answer(result: Any) -> Any:
    if not result.returns_rows:
        return ("rowcount", result.rowcount)
    rows = list(result)
    return [(tuple(row), dict(row._mapping), [getattr(row, k) for k in row._mapping]) for row in rows]


@pytest.mark.parametrize(
    ("statement", "parameters"),
    [
        (BY_ID, {"b_id": "a"}),
        (BY_ID, {"b_id": "missing"}),
        (FLAGGED, {}),
        (FIRST, {"b_limit": 1}),
        (BUMP, {"b_id": "a", "b_by": 5}),
        (SET, {"b_id": "b", "flag": True, "at": AT, "ratio": 2.5}),
        (SET, {"b_id": "a", "note": "set"}),
        (INSERT, {"id": "c", "n": 3, "ratio": 1.0, "flag": True, "at": AT, "note": "x"}),
        (DELETE, {"b_id": "a"}),
        (UPSERT_TEXT, {"id": "a", "n": 5, "flag": True}),
        (UPSERT_TEXT, {"id": "z", "n": 5, "flag": False}),
    ],
    ids=[
        "by-id",
        "none-found",
        "literal-binds",
        "limit",
        "update-returning",
        "set-some",
        "set-others",
        "insert",
        "delete",
        "text-upsert-existing",
        "text-upsert-new",
    ],
)
async def test_a_planned_statement_answers_as_sqlalchemy_does(
    db: Database, statement: sa.Executable, parameters: dict[str, Any]
) -> None:
    planned, through_sqlalchemy = await both(db, statement, parameters)
    assert planned == through_sqlalchemy
    async with db.read() as conn:  # it was planned, not silently left to SQLAlchemy
        assert Plan.of(statement, conn.sync_connection.dialect, parameters) is not None  # type: ignore[attr-defined]


async def test_rows_are_read_as_the_stores_read_them(db: Database) -> None:
    async with db.begin() as conn:
        for row in ROWS:
            await conn.execute(INSERT, row)
    for _ in range(2):
        async with db.read() as conn:
            result = await conn.execute(BY_ID, {"b_id": "a"})
            row = result.first()
    assert (row.id, row.flag, row.at, row.note) == ("a", True, AT, None)
    assert row._mapping["ratio"] == 0.5
    async with db.read() as conn:
        assert (await conn.execute(BY_ID, {"b_id": "b"})).one().flag is False
        with pytest.raises(sa.exc.NoResultFound):
            (await conn.execute(BY_ID, {"b_id": "missing"})).one()
        assert (await conn.execute(FIRST, {"b_limit": 5})).scalars().all() == ["a", "b"]


async def test_a_refused_statement_raises_sqlalchemys_error(db: Database) -> None:
    """Stores catch `IntegrityError` (a key raced in concurrently): a planned insert raises it too."""
    async with db.begin() as conn:
        await conn.execute(INSERT, ROWS[0])
        await conn.execute(INSERT, ROWS[1])
    with pytest.raises(sa.exc.IntegrityError):
        async with db.begin() as conn:
            await conn.execute(INSERT, ROWS[0])


@pytest.mark.parametrize(
    ("statement", "parameters"),
    [
        (ANY_OF, {"b_ids": ["a", "b"]}),
        (COUNTED, {}),
        (stamped.insert(), {"id": "s"}),
        (SELECT_TEXT, {"low": 0}),
        (RETURNING_TEXT, {"id": "a"}),
    ],
    ids=["expanding-in", "a-count-column", "python-default", "text-with-rows", "text-returning"],
)
async def test_what_sqlalchemy_must_do_more_for_is_left_to_it(
    db: Database, statement: sa.Executable, parameters: dict[str, Any]
) -> None:
    for n in range(2):
        async with db.begin() as conn:
            result = await conn.execute(statement, {**parameters, "id": f"s{n}"} if "id" in parameters else parameters)
            assert isinstance(result, sa.CursorResult)
    async with db.read() as conn:
        assert Plan.of(statement, conn.sync_connection.dialect, parameters) is None  # type: ignore[attr-defined]
        if statement.is_insert:  # type: ignore[attr-defined]
            assert (await conn.execute(sa.select(stamped.c.at))).scalars().all() == [1.5, 1.5]  # the default applied


async def test_a_statement_built_per_call_is_never_planned(db: Database) -> None:
    """Compiling one is SQLAlchemy's cached work: a plan is made only for a statement run twice."""
    async with db.begin() as conn:
        await conn.execute(INSERT, ROWS[0])
    statement = sa.select(things).where(things.c.id == sa.bindparam("b_id"))
    async with db.read() as conn:
        result = await conn.execute(statement, {"b_id": "a"})
        assert isinstance(result, sa.CursorResult)
        assert result.one().id == "a"
