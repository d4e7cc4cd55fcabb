"""The chaos run's nemesis: real faults in a real shop, each one healed afterwards.

Every cycle kill -9s a random service instance (the supervisor restarts it) and adds one
more fault, in turn: restart NATS, a database lock held by another connection, a failing
payment provider, a slow one. Only processes this run started are touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import sqlite3
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import psutil

from meshop.runtime.inspect import instances_via_nats
from meshop.runtime.nats_server import EmbeddedNats

SERVICES = ("users", "catalog", "inventory", "orders", "payments", "shipping")
#: The table each lockable service's hot path writes.
LOCKED_TABLES = {"inventory": "stock", "payments": "payments", "orders": "orders"}


@dataclass
class FaultLog:
    cycles: int = 0
    kills: list[str] = field(default_factory=list)
    faults: list[str] = field(default_factory=list)
    #: Extra faults that could not be applied (reported, never counted as applied).
    failed: list[str] = field(default_factory=list)
    #: What each cycle did and measured, by cycle number (the lab's nemesis fills it).
    details: dict[int, dict[str, Any]] = field(default_factory=dict)


class Nemesis:
    def __init__(
        self,
        *,
        supervisor_pid: int,
        data_dir: Path,
        nats: EmbeddedNats,
        rng: random.Random,
        database_url: str | None = None,
        database_prefix: str = "meshop_",
        fault_s: float = 3.0,
        calm_s: float = 2.0,
        say: Callable[[str], None] = print,
    ) -> None:
        self.supervisor_pid = supervisor_pid
        self.data_dir = data_dir
        self.nats = nats
        self.rng = rng
        self.database_url = database_url
        self.database_prefix = database_prefix
        self.fault_s = fault_s
        self.calm_s = calm_s
        self.say = say
        self.log = FaultLog()
        self._extras: list[tuple[str, Callable[[], Awaitable[Callable[[], Awaitable[None]]]]]] = [
            ("restart NATS", self._restart_nats),
            ("hold a database lock", self._hold_lock),
            ("failing payment provider", lambda: self._provider(latency_ms=0, failure_rate=0.6)),
            ("slow payment provider", lambda: self._provider(latency_ms=1500, failure_rate=0.0)),
        ]

    def workers(self) -> dict[int, str]:
        """pid → service of every service process the supervisor runs now (not the gateway)."""
        found = {}
        with contextlib.suppress(psutil.NoSuchProcess):
            for child in psutil.Process(self.supervisor_pid).children():
                with contextlib.suppress(psutil.Error):
                    cmdline = child.cmdline()
                    if "meshop.runtime.worker" in cmdline and cmdline[-1] in SERVICES:
                        found[child.pid] = cmdline[-1]
        return found

    def kill_one(self) -> str | None:
        workers = self.workers()
        if not workers:
            return None
        pid = self.rng.choice(sorted(workers))
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        what = f"kill -9 {workers[pid]} (pid {pid}, one of {len(workers)} service processes)"
        self.log.kills.append(workers[pid])
        return what

    async def cycle(self) -> None:
        """One fault cycle: a kill plus the next extra fault, held `fault_s`, then healed."""
        name, start = self._extras[self.log.cycles % len(self._extras)]
        self.log.cycles += 1
        killed = self.kill_one()
        try:
            heal = await start()
        except Exception as exc:  # e.g. the database refused one more connection: say so, go on
            self.say(f"chaos | cycle {self.log.cycles}: {killed}; could not {name}: {exc!r}")
            self.log.failed.append(name)
            await asyncio.sleep(self.fault_s + self.calm_s)
            return
        self.log.faults.append(name)
        self.say(f"chaos | cycle {self.log.cycles}: {killed or 'nothing to kill'} + {name}")
        try:
            await asyncio.sleep(self.fault_s)
        finally:
            await heal()
        await asyncio.sleep(self.calm_s)

    async def _restart_nats(self) -> Callable[[], Awaitable[None]]:
        await self.nats.stop()

        async def heal() -> None:
            await self.nats.start()  # the same port and store: JetStream keeps its streams

        return heal

    async def _provider(self, *, latency_ms: float, failure_rate: float) -> Callable[[], Awaitable[None]]:
        await self._set_provider(latency_ms=latency_ms, failure_rate=failure_rate)

        async def heal() -> None:
            await self._set_provider(latency_ms=0, failure_rate=0.0)

        return heal

    async def _set_provider(self, *, latency_ms: float, failure_rate: float) -> None:
        """Set the simulated provider's faults on every payments instance registered now."""
        try:
            instances = [i for i in await instances_via_nats(self.data_dir, user="chaos") if i["service"] == "payments"]
        except Exception as exc:  # NATS just came back: this fault is skipped, not faked
            self.say(f"chaos | could not list payments instances: {exc!r}")
            return
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as session:
            for instance in instances:
                body = {"latency_ms": latency_ms, "failure_rate": failure_rate}
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.put(f"http://{instance['address']}/_meshop/provider", json=body) as resp:
                        resp.raise_for_status()

    async def _hold_lock(self) -> Callable[[], Awaitable[None]]:
        service = self.rng.choice(sorted(LOCKED_TABLES))
        if self.database_url:
            return await self._hold_postgres_lock(service)
        return await self._hold_sqlite_lock(service)

    async def _hold_postgres_lock(self, service: str) -> Callable[[], Awaitable[None]]:
        server = self.database_url.replace("postgresql+asyncpg://", "postgresql://")  # type: ignore[union-attr]
        conn = await asyncpg.connect(f"{server.rstrip('/')}/{self.database_prefix}{service}")
        transaction = conn.transaction()
        await transaction.start()
        await conn.execute(f"LOCK TABLE {LOCKED_TABLES[service]} IN ACCESS EXCLUSIVE MODE")

        async def heal() -> None:
            await transaction.rollback()
            await conn.close()

        return heal

    async def _hold_sqlite_lock(self, service: str) -> Callable[[], Awaitable[None]]:
        locked, release = threading.Event(), threading.Event()

        def hold() -> None:
            conn = sqlite3.connect(self.data_dir / f"{service}.db", timeout=30, isolation_level=None)
            try:
                conn.execute("BEGIN EXCLUSIVE")
                locked.set()
                release.wait(60)
                conn.execute("ROLLBACK")
            finally:
                conn.close()
                locked.set()

        thread = threading.Thread(target=hold, name=f"lock-{service}", daemon=True)
        thread.start()
        await asyncio.to_thread(locked.wait, 30)

        async def heal() -> None:
            release.set()
            await asyncio.to_thread(thread.join, 30)

        return heal
