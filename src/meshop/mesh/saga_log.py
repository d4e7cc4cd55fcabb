"""A `SagaLog` in the owning service's SQL database (table `sagas`)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import sqlalchemy as sa

from meshop.mesh.saga import SagaState, SagaStatus
from meshop.mesh.store import Conn, Database

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


sagas = sa.Table("sagas", metadata, *_columns())


def create_saga_table(op: Any) -> None:
    """For a service's Alembic migration: `create_saga_table(op)`."""
    op.create_table("sagas", *_columns())
    op.create_index("ix_sagas_unfinished", "sagas", ["status", "updated_at"])


Projection = Callable[[Conn, SagaState], Awaitable[None]]


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
        return {
            "id": state.saga_id,
            "name": state.name,
            "status": state.status.value,
            "step": state.step,
            "data": msgspec.json.encode(state.data).decode(),
            "reason": state.reason,
            "deadline_at": state.deadline_at,
            "updated_at": time.time(),
        }

    async def save(self, state: SagaState) -> None:
        row = self.row(state)
        async with self._db.begin() as conn:
            await conn.execute(sagas.update().where(sagas.c.id == state.saga_id).values(**row))
            if self._project is not None:
                await self._project(conn, state)
        state.updated_at = row["updated_at"]

    async def touch(self, state: SagaState) -> None:
        now = time.time()
        async with self._db.begin() as conn:
            await conn.execute(sagas.update().where(sagas.c.id == state.saga_id).values(updated_at=now))
        state.updated_at = now

    async def claim(self, state: SagaState) -> bool:
        now = time.time()
        async with self._db.begin() as conn:
            result = await conn.execute(
                sagas.update()
                .where(sagas.c.id == state.saga_id, sagas.c.updated_at == state.updated_at)
                .values(updated_at=now)
            )
        if result.rowcount != 1:
            return False  # another process claimed or advanced it first
        state.updated_at = now
        return True

    async def load(self, saga_id: str) -> SagaState | None:
        async with self._db.read() as conn:
            row = (await conn.execute(sa.select(sagas).where(sagas.c.id == saga_id))).first()
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
    )
