"""`meshop migrate`: bring each service's database to its newest migration, once, then exit.

What a Kubernetes Job runs once per rollout (decision 0022), before or while the new pods
start. Each service is migrated under the same lock its processes take at start
(`Database.init_lock`: `flock` beside a SQLite file, `pg_advisory_lock` on PostgreSQL), so
two runs, or a run and a starting replica, never migrate one database at once: the second
waits, then finds it up to date. Seeding stays with the services (it needs their runtime).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from meshop.mesh.data.store import Database, head_revision
from meshop.mesh.errors import ConfigError
from meshop.mesh.service.settings import Settings, load_settings
from meshop.services import PROCESSES, load_definition

__all__ = ["Migrated", "migrate", "with_database"]


@dataclass(frozen=True)
class Migrated:
    """What `migrate` did to one service's database."""

    service: str
    before: str | None
    after: str | None
    waited_s: float
    took_s: float

    @property
    def changed(self) -> bool:
        return self.before != self.after

    def line(self) -> str:
        if not self.changed:
            return f"{self.service}: up to date at {self.after}"
        waited = f" (waited {self.waited_s:.1f} s for the lock)" if self.waited_s >= 0.1 else ""
        return f"{self.service}: migrated {self.before or 'empty'} -> {self.after} in {self.took_s:.1f} s{waited}"


def with_database() -> list[str]:
    """Every process that has a database of its own, in start order."""
    return [name for name in PROCESSES if load_definition(name).migrations is not None]


async def migrate(
    service: str,
    *,
    settings: Settings | None = None,
    locked: Callable[[str], None] | None = None,
) -> Migrated:
    """Migrate `service`'s configured database to head under its init lock.

    `locked(service)` is called once the lock is held (tests use it to see the order).
    """
    definition = load_definition(service)
    if definition.migrations is None:
        raise ConfigError(f"{service} has no database; the services with one: {', '.join(with_database())}")
    settings = settings or load_settings(service)
    db = Database(settings.database_url_for(service), name=service, pool_size=1)
    try:
        await db.ensure_exists()
        asked = time.monotonic()
        async with db.init_lock():
            started = time.monotonic()
            if locked is not None:
                locked(service)
            before = await db.current_revision()
            await db.migrate(definition.migrations)
            after = await db.current_revision()
        if after != head_revision(definition.migrations):
            raise ConfigError(f"{service}: the database is at {after}, not at the newest migration")
        return Migrated(service, before, after, waited_s=started - asked, took_s=time.monotonic() - started)
    finally:
        await db.close()
