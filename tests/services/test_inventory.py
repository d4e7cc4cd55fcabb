"""Inventory on SQLite and PostgreSQL: reservations all or nothing, one effect per key;
restocking only SKUs the catalog sells."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest

import meshop.services.inventory.app as inventory_app
from meshop.contracts import catalog
from meshop.contracts.inventory import Line, ReserveRequest
from meshop.mesh.api.operation import Operation
from meshop.mesh.client.client import ServiceClient
from meshop.mesh.data.store import Database
from meshop.mesh.errors import Conflict, InternalError, MeshError, NoInstancesError, NotFound, TransportError
from meshop.mesh.security.tokens import SigningKey, TokenIssuer, TokenVerifier
from meshop.mesh.testing import TestMesh
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


class FakeCatalog:
    """The catalog's lookup, as inventory calls it through the mesh client."""

    def __init__(self, *skus: str) -> None:
        self.skus = set(skus)
        self.failure: MeshError | None = None
        self.asked: list[list[str]] = []

    async def call(self, op: Operation[Any, Any], body: Any = None, **_options: Any) -> Any:
        assert op == catalog.LOOKUP
        self.asked.append(list(body.skus))
        if self.failure is not None:
            raise self.failure
        return catalog.LookupResult(items=[_product(sku) for sku in body.skus if sku in self.skus])


def _product(sku: str) -> catalog.Product:
    return catalog.Product(
        id=sku.lower(), sku=sku, name=sku, description="", price_cents=100, currency="USD", category="test"
    )


KEY = SigningKey.generate()


def admin() -> dict[str, str]:
    """An admin's headers, issued now: a token made at import expires during a long test run."""
    return {"authorization": f"Bearer {TokenIssuer(KEY).issue('admin', ['admin'])}"}


@asynccontextmanager
async def restocking(
    tmp_path: Path, database_url: str | None, known: FakeCatalog
) -> AsyncIterator[tuple[aiohttp.ClientSession, str, Database]]:
    async def jwks() -> dict[str, Any]:
        return {"keys": [KEY.public_jwk()]}

    async def seed(db: Database) -> None:
        async with db.begin() as conn:
            await conn.execute(
                store.stock.insert(), [{"sku": "KIT-001", "available": 5, "reserved": 0, "committed": 0}]
            )

    async with TestMesh(tmp_path, database_url=database_url, verifier=TokenVerifier(jwks)) as mesh:
        inventory = await mesh.start(inventory_app.DEFINITION, seed=seed, client=cast(ServiceClient, known))
        async with aiohttp.ClientSession() as session:
            yield session, await inventory.serve_http(), inventory.database


async def restock(session: aiohttp.ClientSession, url: str, sku: str) -> tuple[int, dict[str, Any], dict[str, str]]:
    async with session.post(f"{url}/admin/stock/{sku}/restock", json={"quantity": 3}, headers=admin()) as resp:
        return resp.status, await resp.json(content_type=None), {k.lower(): v for k, v in resp.headers.items()}


async def stock_rows(db: Database) -> dict[str, int]:
    async with db.read() as conn:
        return {r.sku: r.available for r in await conn.execute(store.stock.select())}


async def test_restocking_a_sku_the_catalog_sells_adds_to_its_stock(
    tmp_path: Path, mesh_database_url: str | None
) -> None:
    known = FakeCatalog("KIT-001", "KIT-002")
    async with restocking(tmp_path, mesh_database_url, known) as (session, url, db):
        assert (await restock(session, url, "KIT-001"))[:2] == (200, {"sku": "KIT-001", "available": 8, "reserved": 0})
        # A product added to the catalog has no stock record until its first restock.
        assert (await restock(session, url, "KIT-002"))[:2] == (200, {"sku": "KIT-002", "available": 3, "reserved": 0})
        assert await stock_rows(db) == {"KIT-001": 8, "KIT-002": 3}
    assert known.asked == [["KIT-001"], ["KIT-002"]]


async def test_restocking_a_sku_the_catalog_does_not_sell_is_404_and_creates_no_stock(
    tmp_path: Path, mesh_database_url: str | None
) -> None:
    known = FakeCatalog("KIT-001")
    async with restocking(tmp_path, mesh_database_url, known) as (session, url, db):
        status, problem, headers = await restock(session, url, "NOPE-404")
        assert (status, headers["content-type"]) == (404, "application/problem+json")
        assert "NOPE-404" in problem["detail"]
        assert await stock_rows(db) == {"KIT-001": 5}
    assert known.asked == [["NOPE-404"]]


async def test_a_path_that_cannot_be_a_sku_is_404_without_asking_the_catalog(
    tmp_path: Path, mesh_database_url: str | None
) -> None:
    known = FakeCatalog("KIT-001")
    async with restocking(tmp_path, mesh_database_url, known) as (session, url, db):
        for sku in ("kit-001", "K" * 41):
            assert (await restock(session, url, sku))[0] == 404
        assert await stock_rows(db) == {"KIT-001": 5}
    assert known.asked == []


@pytest.mark.parametrize(
    "failure",
    [
        NoInstancesError("no instance of 'catalog' is registered"),
        TransportError("catalog did not answer within 2s", sent=True),
        InternalError("the server failed to handle this request"),
    ],
    ids=["no-instance", "timeout", "500"],
)
async def test_restocking_while_the_catalog_cannot_answer_is_503_with_retry_after_and_changes_nothing(
    tmp_path: Path, mesh_database_url: str | None, failure: MeshError
) -> None:
    known = FakeCatalog("KIT-001")
    known.failure = failure
    async with restocking(tmp_path, mesh_database_url, known) as (session, url, db):
        status, problem, headers = await restock(session, url, "KIT-001")
        assert (status, headers["content-type"]) == (503, "application/problem+json")
        assert headers["retry-after"] == "2"
        assert problem["detail"] == "the catalog cannot confirm this SKU now; nothing was restocked"
        assert await stock_rows(db) == {"KIT-001": 5}
