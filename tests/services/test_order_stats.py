"""Users' order stats (the `order-stats` consumer's read model) on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest

from meshop.mesh.data._sqlite import Plan
from meshop.mesh.data.store import Database
from meshop.services.users import store

pytestmark = pytest.mark.integration


async def stats(db: Database, user_id: str) -> tuple[int, int, int, int] | None:
    async with db.read() as conn:
        row = await store.order_stats_of(conn, user_id)
    return None if row is None else (row.placed, row.confirmed, row.cancelled, row.spent_cents)


async def test_each_event_adds_to_its_customers_counters_from_zero(users_db: Database) -> None:
    for deltas in ({"placed": 1}, {"placed": 1}, {"confirmed": 1, "spent_cents": 250}, {"cancelled": 1}):
        async with users_db.begin() as conn:
            await store.add_order_stats(conn, "u1", **deltas)
    async with users_db.begin() as conn:
        await store.add_order_stats(conn, "u2", placed=1)
    assert await stats(users_db, "u1") == (2, 1, 1, 250)
    assert await stats(users_db, "u2") == (1, 0, 0, 0)
    assert await stats(users_db, "nobody") is None


async def test_a_counter_that_does_not_exist_is_refused(users_db: Database) -> None:
    async with users_db.begin() as conn:
        with pytest.raises(ValueError, match="refunded"):
            await store.add_order_stats(conn, "u1", refunded=1)


async def test_on_sqlite_the_statement_runs_from_a_plan(users_db: Database) -> None:
    if not users_db.is_sqlite:
        pytest.skip("plans are SQLite's (decision 0036)")
    for _ in range(2):
        async with users_db.begin() as conn:
            await store.add_order_stats(conn, "u1", placed=1)
    async with users_db.read() as conn:
        parameters = {"user_id": "u1", "placed": 1, "confirmed": 0, "cancelled": 0, "spent_cents": 0}
        dialect = conn.sync_connection.dialect  # type: ignore[attr-defined]
        assert Plan.of(store._ADD_ORDER_STATS, dialect, parameters) is not None
