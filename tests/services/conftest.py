"""Fixtures of the services' tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import meshop.services.users.app as users_app
from meshop.mesh.data.store import Database


@pytest.fixture
async def users_db(db_url: str) -> AsyncIterator[Database]:
    """The users service's database, migrated, on SQLite and on PostgreSQL."""
    database = Database(db_url, name="users")
    await database.ensure_exists()
    await database.migrate(Path(users_app.__file__).parent / "migrations")
    yield database
    await database.close()


@pytest.fixture
def mesh_database_url(db_url: str) -> str | None:
    """A `TestMesh`'s `database_url` for the same two runs: on SQLite its own migrated copies
    (None), on PostgreSQL the test's database."""
    return None if db_url.startswith("sqlite") else db_url
