"""A benchmark shop's PostgreSQL databases: fresh names per shop, their backends, dropped after.

`meshop up` with `MESHOP_DATABASE_URL` (a server) and `MESHOP_DATABASE_PREFIX` gives each
service the database `<prefix><service>` on that server, created by the service when it
is missing (as `meshop chaos --postgres` runs). A `BenchDatabases` picks a prefix no run
has used (`bench_<random>_<label>_`), finds the server processes that serve those
databases (their CPU is a checkout's too) and drops every database with the prefix.
"""

from __future__ import annotations

import uuid

import asyncpg

DEFAULT_SERVER = "postgresql://postgres@127.0.0.1:5432"


class BenchDatabases:
    """One shop's databases on `server` (trust auth as the postgres user, by default)."""

    def __init__(self, server: str, label: str, *, run: str | None = None) -> None:
        self.server = server.rstrip("/")
        self.prefix = f"bench_{run or uuid.uuid4().hex[:8]}_{label}_"

    @property
    def env(self) -> dict[str, str]:
        """What the shop's processes need to use them."""
        return {"MESHOP_DATABASE_URL": self.server, "MESHOP_DATABASE_PREFIX": self.prefix}

    async def _admin(self) -> asyncpg.Connection:
        return await asyncpg.connect(f"{self.server}/postgres")

    async def check(self) -> str:
        """The server's version; fails (with the server's answer) when it cannot be used."""
        conn = await self._admin()
        try:
            taken = await conn.fetchval("SELECT count(*) FROM pg_database WHERE starts_with(datname, $1)", self.prefix)
            if taken:
                raise RuntimeError(f"databases named {self.prefix}* exist already on {self.server}")
            return str(await conn.fetchval("SHOW server_version"))
        finally:
            await conn.close()

    async def backend_pids(self) -> list[int]:
        """The server processes connected to this shop's databases now."""
        conn = await self._admin()
        try:
            rows = await conn.fetch("SELECT pid FROM pg_stat_activity WHERE starts_with(datname, $1)", self.prefix)
            return [int(row["pid"]) for row in rows]
        finally:
            await conn.close()

    async def drop(self) -> list[str]:
        """Drop every database with the prefix (the shop must be stopped); their names."""
        conn = await self._admin()
        try:
            names = [
                str(row["datname"])
                for row in await conn.fetch(
                    "SELECT datname FROM pg_database WHERE starts_with(datname, $1)", self.prefix
                )
            ]
            for name in names:
                await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            return names
        finally:
            await conn.close()
