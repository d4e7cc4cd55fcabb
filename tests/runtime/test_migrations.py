"""`meshop migrate`: each database to head once, under the lock a starting service takes."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from typer.testing import CliRunner

from meshop.cli.main import app
from meshop.mesh.data.store import Database
from meshop.mesh.service.settings import Settings
from meshop.runtime.migrations import migrate, with_database

pytestmark = pytest.mark.integration


def test_every_service_with_a_database_is_migrated_by_all() -> None:
    assert with_database() == ["users", "catalog", "inventory", "payments", "shipping", "orders"]


async def lock_held_blocks_migrate(db_url: str, settings: Settings) -> None:
    """While something holds catalog's init lock, `migrate` waits; once released it migrates."""
    holder = Database(db_url, name="catalog")
    await holder.ensure_exists()
    locked: list[str] = []
    try:
        async with holder.init_lock():
            running = asyncio.create_task(migrate("catalog", settings=settings, locked=locked.append))
            await asyncio.sleep(0.3)  # the lock held a while: all along, `migrate` waits
            assert locked == []
            assert not running.done()
        done = await asyncio.wait_for(running, 30)
    finally:
        await holder.close()
    assert locked == ["catalog"]
    assert done.changed
    assert done.before is None
    # Held 0.3 s from the task's creation; its own clock starts when it runs, later under load.
    assert done.waited_s >= 0.1


async def test_a_migration_waits_for_the_lock_on_sqlite(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    await lock_held_blocks_migrate(settings.database_url_for("catalog"), settings)


async def test_a_migration_waits_for_the_lock_on_postgresql(pg_url: str) -> None:
    await lock_held_blocks_migrate(pg_url, Settings(service_database_urls={"catalog": pg_url}))


async def test_two_concurrent_runs_migrate_once_on_postgresql(pg_url: str) -> None:
    settings = Settings(service_database_urls={"catalog": pg_url})
    first, second = await asyncio.gather(migrate("catalog", settings=settings), migrate("catalog", settings=settings))
    assert sorted([first.changed, second.changed]) == [False, True]
    late = second if first.changed else first
    assert late.before == late.after == "catalog_0002"  # it found the other's work done
    again = await migrate("catalog", settings=settings)
    assert not again.changed
    assert again.line() == "catalog: up to date at catalog_0002"


def test_the_command_migrates_then_reports_up_to_date_and_refuses_a_service_without_a_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MESHOP_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("MESHOP_CATALOG_DATABASE_URL", f"sqlite:///{tmp_path / 'c.db'}")
    runner = CliRunner()
    first = runner.invoke(app, ["migrate", "catalog"])
    assert (first.exit_code, first.stdout.split(" in ")[0]) == (0, "catalog: migrated empty -> catalog_0002")
    again = runner.invoke(app, ["migrate", "catalog", "catalog"])
    assert (again.exit_code, again.stdout) == (0, "catalog: up to date at catalog_0002\n")
    both = runner.invoke(app, ["migrate", "--all", "catalog"])
    assert both.exit_code == 2
    assert "not both" in both.stderr
    refused = runner.invoke(app, ["migrate", "gateway"])
    assert refused.exit_code == 2
    assert "gateway has no database" in refused.stderr


def test_a_database_it_cannot_reach_fails_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHOP_CATALOG_DATABASE_URL", f"sqlite:///{tmp_path / 'file' / 'below' / 'a-file.db'}")
    (tmp_path / "file").write_text("not a directory")
    failed = CliRunner().invoke(app, ["migrate", "catalog"])
    assert failed.exit_code == 1
    assert failed.stderr.startswith("meshop: catalog: ")
    assert len(failed.stderr.splitlines()) == 1
