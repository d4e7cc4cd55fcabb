"""Inventory reservations on SQLite and PostgreSQL: all or nothing, one effect per key."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import meshop.services.inventory.app as inventory_app
from meshop.contracts.inventory import Line, ReserveRequest
from meshop.mesh.errors import Conflict, NotFound
from meshop.mesh.store import Database
from meshop.services.inventory import domain, store

pytestmark = pytest.mark.integration


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    database = Database(db_url, name="inventory")
    await database.ensure_exists()
    await database.migrate(Path(inventory_app.__file__).parent / "migrations")
    async with database.begin() as conn:
        await conn.execute(
            store.stock.insert(),
            [
                {"sku": "A", "available": 5, "reserved": 0, "committed": 0},
                {"sku": "B", "available": 1, "reserved": 0, "committed": 0},
            ],
        )
    yield database
    await database.close()


async def levels(db: Database) -> dict[str, tuple[int, int, int]]:
    async with db.read() as conn:
        rows = await store.stock_of(conn, ["A", "B"])
    return {sku: (r.available, r.reserved, r.committed) for sku, r in rows.items()}


def request(*lines: tuple[str, int]) -> ReserveRequest:
    return ReserveRequest(order_id="o1", items=[Line(sku=s, quantity=q) for s, q in lines])


async def test_reserve_takes_every_line_and_the_same_key_changes_nothing_more(db: Database) -> None:
    for _ in range(3):
        async with db.begin() as conn:
            result = await domain.reserve(conn, "o1:reserve", request(("A", 2), ("B", 1)))
        assert result.status == "RESERVED"
    assert await levels(db) == {"A": (3, 2, 0), "B": (0, 1, 0)}


async def test_reserve_with_one_short_line_takes_nothing(db: Database) -> None:
    async with db.begin() as conn:
        result = await domain.reserve(conn, "k", request(("A", 2), ("B", 2)))
    assert result.status == "REJECTED"
    assert "B" in (result.reason or "")
    assert await levels(db) == {"A": (5, 0, 0), "B": (1, 0, 0)}


async def test_an_unknown_sku_is_rejected(db: Database) -> None:
    async with db.begin() as conn:
        assert (await domain.reserve(conn, "k", request(("ZZZ", 1)))).status == "REJECTED"


async def test_duplicate_lines_are_merged(db: Database) -> None:
    async with db.begin() as conn:
        result = await domain.reserve(conn, "k", request(("A", 2), ("A", 2)))
    assert [(line.sku, line.quantity) for line in result.items] == [("A", 4)]
    assert (await levels(db))["A"] == (1, 4, 0)


async def test_release_returns_stock_once(db: Database) -> None:
    async with db.begin() as conn:
        await domain.reserve(conn, "k", request(("A", 2)))
    for _ in range(2):
        async with db.begin() as conn:
            assert (await domain.release(conn, "k")).status == "RELEASED"
    assert (await levels(db))["A"] == (5, 0, 0)
    async with db.begin() as conn:
        with pytest.raises(Conflict):
            await domain.commit(conn, "k")


async def test_commit_is_final_and_idempotent(db: Database) -> None:
    async with db.begin() as conn:
        await domain.reserve(conn, "k", request(("A", 2)))
    for _ in range(2):
        async with db.begin() as conn:
            assert (await domain.commit(conn, "k")).status == "COMMITTED"
    assert (await levels(db))["A"] == (3, 0, 2)
    async with db.begin() as conn:
        with pytest.raises(Conflict):
            await domain.release(conn, "k")


async def test_releasing_an_unknown_reservation_is_not_found(db: Database) -> None:
    async with db.begin() as conn:
        with pytest.raises(NotFound):
            await domain.release(conn, "nope")


async def test_release_by_key_undoes_a_reservation_whose_answer_was_lost(db: Database) -> None:
    async with db.begin() as conn:
        await domain.reserve(conn, "o1:reserve", request(("A", 2)))  # done, but the caller timed out
    async with db.begin() as conn:
        released = await domain.release_by_key(conn, "o1:reserve", "o1")
    assert released.status == "RELEASED"
    assert (await levels(db))["A"] == (5, 0, 0)


async def test_release_by_key_before_the_reservation_arrives_means_it_never_takes_stock(db: Database) -> None:
    async with db.begin() as conn:
        tombstone = await domain.release_by_key(conn, "o2:reserve", "o2")
    assert (tombstone.status, tombstone.items) == ("RELEASED", [])
    async with db.begin() as conn:  # the slow original request finally arrives
        late = await domain.reserve(conn, "o2:reserve", request(("A", 2)))
    assert late.status == "RELEASED"
    assert (await levels(db))["A"] == (5, 0, 0)


async def test_concurrent_commits_or_releases_of_one_reservation_move_stock_once(db: Database) -> None:
    import asyncio

    async with db.begin() as conn:
        await domain.reserve(conn, "o1:reserve", request(("A", 2)))
        await domain.reserve(conn, "o9:reserve", request(("A", 1)))  # so a double move would not fail loudly
    assert (await levels(db))["A"] == (2, 3, 0)

    async def commit() -> None:
        async with db.begin() as conn:
            await domain.commit(conn, "o1:reserve")

    await asyncio.gather(commit(), commit(), commit())  # a retried commit racing the original
    assert (await levels(db))["A"] == (2, 1, 2)

    async def release() -> None:
        async with db.begin() as conn:
            await domain.release(conn, "o9:reserve")

    await asyncio.gather(release(), release())
    assert (await levels(db))["A"] == (3, 0, 2)
