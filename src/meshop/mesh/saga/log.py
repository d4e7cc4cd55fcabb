"""A `SagaLog` in the owning service's SQL database (table `sagas`)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import sqlalchemy as sa

from meshop.mesh.data.store import Conn, Database
from meshop.mesh.saga.orchestrator import SagaState, SagaStatus, SagaTakenOver

metadata = sa.MetaData()


def _columns() -> list[sa.Column[Any]]:
    return [
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(40), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("step", sa.Integer, nullable=False),
        sa.Column("data", sa.Text, nullable=False),
        sa.Column("reason", sa.String(40)),
        sa.Column("deadline_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    ]


def _columns_v2() -> list[sa.Column[Any]]:
    return [
        sa.Column("cancel_requested", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("pivoted", sa.Boolean, nullable=False, server_default=sa.false()),
    ]


sagas = sa.Table("sagas", metadata, *_columns(), *_columns_v2())


def create_saga_table(op: Any) -> None:
    """For a service's first Alembic migration: `create_saga_table(op)` (schema v1)."""
    op.create_table("sagas", *_columns())
    op.create_index("ix_sagas_unfinished", "sagas", ["status", "updated_at"])


def add_saga_cancellation(op: Any) -> None:
    """For a later migration: the columns that make cancellation race-free (schema v2)."""
    for column in _columns_v2():
        op.add_column("sagas", column)


Projection = Callable[[Conn, SagaState], Awaitable[None]]


# Built once: a statement built per call costs more in SQLAlchemy (coercing its arguments,
# generating its cache key) than SQLite takes to run it; a prebuilt one's cache key is
# memoized, and its values travel as parameters (docs/decisions/0032). `b_`: bound in WHERE,
# never a column of the SET clause.
_INSERT = sagas.insert()
#: The compare-and-set on the lease; a save also reads back whether cancellation was requested.
_LEASED = sagas.update().where(sagas.c.id == sa.bindparam("b_id"), sagas.c.updated_at == sa.bindparam("b_lease"))
_SAVE = _LEASED.returning(sagas.c.cancel_requested)
#: Records that the pivot was entered unless cancellation was requested, in one statement
#: that also says which (the update locks the row on PostgreSQL, as the select for update did).
_ENTER_PIVOT = (
    sagas.update()
    .where(sagas.c.id == sa.bindparam("b_id"))
    .values(pivoted=sa.case((sagas.c.cancel_requested, sagas.c.pivoted), else_=sa.true()))
    .returning(sagas.c.cancel_requested)
)
_CANCEL_REQUESTED = sa.select(sagas.c.cancel_requested).where(sagas.c.id == sa.bindparam("b_id"))
_LOAD = sa.select(sagas).where(sagas.c.id == sa.bindparam("b_id"))


class SqlSagaLog:
    """Persists saga states in the owning service's database.

    `project`, when given, runs in the same transaction as every save: the service
    mirrors the saga's progress onto its own rows (an order's status) atomically, in one
    write per step.
    """

    def __init__(self, db: Database, *, project: Projection | None = None) -> None:
        self._db = db
        self._project = project

    @staticmethod
    def row(state: SagaState) -> dict[str, Any]:
        """The row of `state`, stamping `state.updated_at` (the lease the next write must match)."""
        state.updated_at = time.time()
        return {
            "id": state.saga_id,
            "name": state.name,
            "status": state.status.value,
            "step": state.step,
            "data": msgspec.json.encode(state.data).decode(),
            "reason": state.reason,
            "deadline_at": state.deadline_at,
            "updated_at": state.updated_at,
        }

    @staticmethod
    async def insert(conn: Conn, state: SagaState) -> None:
        """In the caller's transaction: record the new saga `state` (stamping its lease)."""
        await conn.execute(_INSERT, SqlSagaLog.row(state))

    async def save(self, state: SagaState) -> None:
        lease = state.updated_at
        row = self.row(state)
        # id and name never change: the update sets the rest, where the lease still matches.
        values = {key: value for key, value in row.items() if key not in ("id", "name")}
        try:
            async with self._db.begin() as conn:
                saved = (await conn.execute(_SAVE, {**values, "b_id": state.saga_id, "b_lease": lease})).first()
                if saved is None:
                    raise SagaTakenOver(state.saga_id)  # rolls back: nothing projected
                if self._project is not None:
                    await self._project(conn, state)
        except BaseException:
            state.updated_at = lease
            raise
        # Read in the same statement as the update: no cancel request can land between the
        # two (SQLite's write lock, PostgreSQL's row lock, both held until the commit).
        state.cancel_requested = bool(saved.cancel_requested)

    async def touch(self, state: SagaState) -> None:
        now = time.time()
        async with self._db.begin() as conn:
            if not await self._renew(conn, state, now):
                raise SagaTakenOver(state.saga_id)
        state.updated_at = now

    @staticmethod
    async def _renew(conn: Conn, state: SagaState, now: float) -> bool:
        """Move `state`'s lease to `now` if it is still ours."""
        params = {"updated_at": now, "b_id": state.saga_id, "b_lease": state.updated_at}
        return bool((await conn.execute(_LEASED, params)).rowcount == 1)

    async def checkpoint(self, state: SagaState, *, entering_pivot: bool) -> bool:
        async with self._db.begin() as conn:
            params = {"b_id": state.saga_id}
            row = (await conn.execute(_ENTER_PIVOT if entering_pivot else _CANCEL_REQUESTED, params)).first()
        return row is not None and bool(row.cancel_requested)

    async def request_cancel(self, conn: Conn, saga_id: str) -> bool:
        """In the caller's transaction: ask a saga to stop; False once it passed its pivot."""
        row = (
            await conn.execute(
                sa.select(sagas.c.pivoted, sagas.c.status).where(sagas.c.id == saga_id).with_for_update()
            )
        ).first()
        if row is None or row.pivoted or row.status != SagaStatus.RUNNING.value:
            return False
        await conn.execute(sagas.update().where(sagas.c.id == saga_id).values(cancel_requested=True))
        return True

    async def claim(self, state: SagaState) -> bool:
        now = time.time()
        async with self._db.begin() as conn:
            claimed = await self._renew(conn, state, now)
        if not claimed:
            return False  # another process claimed or advanced it first
        state.updated_at = now
        return True

    async def load(self, saga_id: str) -> SagaState | None:
        async with self._db.read() as conn:
            row = (await conn.execute(_LOAD, {"b_id": saga_id})).first()
        return _state(row) if row else None

    async def unfinished(self, *, idle_for_s: float) -> list[SagaState]:
        cutoff = time.time() - idle_for_s
        async with self._db.read() as conn:
            rows = await conn.execute(
                sa.select(sagas)
                .where(
                    sagas.c.status.in_([SagaStatus.RUNNING.value, SagaStatus.COMPENSATING.value]),
                    sagas.c.updated_at <= cutoff,
                )
                .order_by(sagas.c.updated_at)
            )
            return [_state(r) for r in rows]


def _state(row: Any) -> SagaState:
    return SagaState(
        saga_id=row.id,
        name=row.name,
        status=SagaStatus(row.status),
        step=row.step,
        data=msgspec.json.decode(row.data),
        reason=row.reason,
        deadline_at=row.deadline_at,
        updated_at=row.updated_at,
        cancel_requested=bool(row.cancel_requested),
    )
