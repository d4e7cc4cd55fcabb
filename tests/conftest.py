"""Shared fixtures: a private embedded NATS server, unique PostgreSQL databases, service credentials."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from meshop.mesh.security.identity import provision
from meshop.mesh.telemetry import tracing
from meshop.mesh.telemetry.tracing import SpanRecord, Tracing
from meshop.runtime.build import refusal
from meshop.runtime.nats_server import EmbeddedNats

PG_SERVER = os.environ.get("MESHOP_TEST_POSTGRES", "postgresql+asyncpg://postgres@127.0.0.1:5432")


def pytest_configure(config: pytest.Config) -> None:
    """The tests run what is built: modules compiled before a source last changed would test old code."""
    why = refusal()
    if why is not None:
        pytest.exit(why, returncode=2)


@pytest.fixture(scope="session")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A nats-server with JetStream of this test session's own (never the machine's 4222)."""
    server = EmbeddedNats(tmp_path_factory.mktemp("nats") / "store")
    url = asyncio.run(server.start())
    yield url
    asyncio.run(server.stop())


@pytest.fixture(scope="session")
def identity_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root of trust and every process's credential, made as `meshop up` makes them."""
    from meshop.services import PROCESSES

    directory = tmp_path_factory.mktemp("identity")
    provision(directory, PROCESSES)
    return directory


@pytest.fixture
def spans() -> Iterator[list[SpanRecord]]:
    """Every span this process finishes during the test (tracing installed, then removed)."""
    finished: list[SpanRecord] = []
    tracer = Tracing("orders", "orders-1")
    tracer.export_to(finished.append)
    tracing.install(tracer)
    yield finished
    tracing.install(None)


@pytest.fixture
def bucket() -> str:
    """A registry bucket name no other test uses."""
    return f"test_{uuid.uuid4().hex[:10]}"


async def _admin(sql: str) -> None:
    engine = create_async_engine(f"{PG_SERVER}/postgres", poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(text(sql))
    finally:
        await engine.dispose()


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    """The URL of a PostgreSQL database that does not exist yet; dropped afterwards."""
    name = f"meshop_test_{uuid.uuid4().hex[:12]}"
    yield f"{PG_SERVER}/{name}"
    await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'test.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each store test runs on SQLite and on PostgreSQL (CI runs both; neither is skipped)."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'test.db'}"
        return
    name = f"meshop_test_{uuid.uuid4().hex[:12]}"
    yield f"{PG_SERVER}/{name}"
    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
