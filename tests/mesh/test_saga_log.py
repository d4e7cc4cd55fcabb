"""The SQL saga log on SQLite and PostgreSQL: persistence and the resume lease."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa

import meshop.services.orders.app as orders_app
from meshop.mesh.data.store import Database
from meshop.mesh.saga.log import SqlSagaLog, sagas
from meshop.mesh.saga.orchestrator import SagaState, SagaStatus, SagaTakenOver

pytestmark = pytest.mark.integration


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    database = Database(db_url, name="orders")
    await database.ensure_exists()
    await database.migrate(Path(orders_app.__file__).parent / "migrations")
    yield database
    await database.close()


async def test_states_round_trip_and_unfinished_ones_are_found(db: Database) -> None:
    log = SqlSagaLog(db)
    state = SagaState(saga_id="s1", name="checkout", data={"items": [1, 2]}, deadline_at=123.5)
    async with db.begin() as conn:
        await conn.execute(sagas.insert().values(**SqlSagaLog.row(state)))
    state.step, state.status = 2, SagaStatus.COMPENSATING
    await log.save(state)
    [found] = await log.unfinished(idle_for_s=0)
    assert (found.step, found.status, found.data, found.deadline_at) == (
        2,
        SagaStatus.COMPENSATING,
        {"items": [1, 2]},
        123.5,
    )
    state.status = SagaStatus.COMPENSATED
    await log.save(state)
    assert await log.unfinished(idle_for_s=0) == []


async def test_only_one_of_two_sweepers_claims_an_idle_saga(db: Database) -> None:
    log = SqlSagaLog(db)
    async with db.begin() as conn:
        await conn.execute(sagas.insert().values(**SqlSagaLog.row(SagaState(saga_id="s1", name="checkout"))))
    [a] = await log.unfinished(idle_for_s=0)
    [b] = await log.unfinished(idle_for_s=0)
    assert await log.claim(a)
    assert not await log.claim(b)  # it saw the old lease
    await log.touch(a)
    assert await log.unfinished(idle_for_s=60) == []  # touched: not idle


async def test_a_slow_runner_whose_saga_was_claimed_cannot_write_it_again(db: Database) -> None:
    projected: list[SagaStatus] = []

    async def project(_conn: object, state: SagaState) -> None:
        projected.append(state.status)

    log = SqlSagaLog(db, project=project)
    slow = SagaState(saga_id="s1", name="checkout")
    async with db.begin() as conn:
        await conn.execute(sagas.insert().values(**SqlSagaLog.row(slow)))
    await log.save(slow)  # the first runner still holds the lease
    [resumed] = await log.unfinished(idle_for_s=0)
    assert await log.claim(resumed)  # another replica thought it idle and took it over
    slow.status = SagaStatus.COMPLETED
    with pytest.raises(SagaTakenOver):
        await log.save(slow)
    with pytest.raises(SagaTakenOver):
        await log.touch(slow)
    assert projected == [SagaStatus.RUNNING]  # the stale end was neither saved nor projected
    resumed.status = SagaStatus.COMPLETED
    await log.save(resumed)
    assert projected == [SagaStatus.RUNNING, SagaStatus.COMPLETED]
    assert await log.unfinished(idle_for_s=0) == []


async def test_a_cancel_requested_before_the_pivot_wins_and_is_seen_by_the_next_save(db: Database) -> None:
    log = SqlSagaLog(db)
    state = SagaState(saga_id="s1", name="checkout")
    async with db.begin() as conn:
        await SqlSagaLog.insert(conn, state)
        assert await log.request_cancel(conn, "s1")
    await log.save(state)
    assert state.cancel_requested
    assert await log.checkpoint(state, entering_pivot=True)  # cancelled: the pivot is not entered
    async with db.read() as conn:
        assert await conn.scalar(sa.select(sagas.c.pivoted).where(sagas.c.id == "s1")) is False


async def test_entering_the_pivot_refuses_later_cancel_requests(db: Database) -> None:
    log = SqlSagaLog(db)
    state = SagaState(saga_id="s1", name="checkout")
    async with db.begin() as conn:
        await SqlSagaLog.insert(conn, state)
    assert not await log.checkpoint(state, entering_pivot=False)
    assert not await log.checkpoint(state, entering_pivot=True)
    async with db.begin() as conn:
        assert not await log.request_cancel(conn, "s1")
    await log.save(state)
    assert not state.cancel_requested
    assert not await log.checkpoint(state, entering_pivot=True)  # a resumed runner enters it again
    assert not await log.checkpoint(SagaState(saga_id="missing", name="checkout"), entering_pivot=True)
