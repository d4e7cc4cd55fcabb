"""`meshop chaos`: run the real shop under faults, heal, wait for quiescence, check I1–I10.

`ChaosRun` owns a NATS server (so it can restart it) and starts `meshop up` on it with
chaos endpoints enabled, on SQLite files or on PostgreSQL databases of its own.
`LabChaosRun` (`meshop chaos --lab`) starts the shop on lab hosts instead (`meshop lab
up`: a NATS cluster, PostgreSQL, every process apart) and breaks hosts, links and
processes (meshop.chaos.lab_nemesis). The rest is shared: customers check out
concurrently while the nemesis runs fault cycles; both go on until the order target and
the cycle target are met. Then every fault is healed, the harness waits until every
accepted order is terminal (bounded: 60 s, I4), every outbox is drained and every
consumer has caught up, and checks the invariants over the admin APIs. What the customers
saw during each fault cycle (requests retried, requests failed for good) is reported per
cycle.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import secrets
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from meshop.chaos.invariants import Record, Result, Snapshot, check_all
from meshop.chaos.lab_nemesis import LabNemesis, counters
from meshop.chaos.nemesis import SERVICES, Nemesis
from meshop.chaos.workload import Workload, WorkloadStats
from meshop.contracts.seed import seed_products
from meshop.lab.shop import LabState
from meshop.runtime.admin import ShopAdmin
from meshop.runtime.events import dead_letters, login_of
from meshop.runtime.nats_server import EmbeddedNats, die_with_parent, free_port
from meshop.runtime.nats_users import ensure_users, render_server_config

TERMINAL_BOUND_S = 60.0
READY_TIMEOUT_S = 90.0
OUTBOX_SERVICES = ("catalog", "inventory", "orders", "payments", "shipping")


@dataclass(frozen=True)
class ChaosConfig:
    orders: int = 300
    cycles: int = 4
    concurrency: int = 8
    seed: int | None = None
    #: A PostgreSQL server URL (`postgresql://user@host:port`): every service gets its own database there.
    database_url: str | None = None
    fault_s: float = 3.0
    calm_s: float = 2.0
    replicas: tuple[str, ...] = ("orders=2",)
    #: Customers keep ordering until the last fault cycle ends (`orders` is then a minimum):
    #: every fault meets load.
    load_throughout: bool = False
    #: Lab hosts (`LabChaosRun`); 0 for a run on this machine's loopback.
    lab_hosts: int = 0
    lab_gateways: int = 1


@dataclass
class ChaosReport:
    config: ChaosConfig
    seed: int
    attempted: int = 0
    accepted: int = 0
    confirmed: int = 0
    cancelled: int = 0
    cancel_reasons: Counter[str] = field(default_factory=Counter)
    duplicates_sent: int = 0
    client_retries: int = 0
    gave_up: int = 0
    token_refreshes: int = 0
    refused: dict[int, int] = field(default_factory=dict)
    retried: dict[str, int] = field(default_factory=dict)
    fault_cycles: int = 0
    kills: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    faults_failed: Counter[str] = field(default_factory=Counter)
    seconds_to_terminal: float = 0.0
    run_s: float = 0.0
    results: list[Result] = field(default_factory=list)
    #: One per fault cycle: the fault, what it did, what the customers saw meanwhile.
    windows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def violations(self) -> int:
        return sum(len(r.violations) for r in self.results)

    def as_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "database": "postgresql" if self.config.database_url or self.config.lab_hosts else "sqlite",
            "lab_hosts": self.config.lab_hosts,
            "orders": {
                "attempted": self.attempted,
                "accepted": self.accepted,
                "confirmed": self.confirmed,
                "cancelled": self.cancelled,
                "cancel_reasons": dict(self.cancel_reasons),
            },
            "clients": {
                "duplicate_submissions": self.duplicates_sent,
                "retries": self.client_retries,
                "retried_because": self.retried,
                "gave_up": self.gave_up,
                "token_refreshes": self.token_refreshes,
                "refused": self.refused,
            },
            "faults": {
                "cycles": self.fault_cycles,
                "kills": self.kills,
                "extra": dict(self.faults),
                "not_applied": dict(self.faults_failed),
            },
            "windows": self.windows,
            "seconds_to_terminal_after_heal": round(self.seconds_to_terminal, 2),
            "run_s": round(self.run_s, 1),
            "invariants": {r.name: {"checked": r.checked, "violations": r.violations[:20]} for r in self.results},
            "violations": self.violations,
        }

    def lines(self) -> list[str]:
        out = [
            f"orders: {self.attempted} attempted, {self.accepted} accepted, {self.confirmed} confirmed, "
            f"{self.cancelled} cancelled {dict(self.cancel_reasons)}",
            f"clients: {self.duplicates_sent} duplicate submissions, {self.client_retries} retries "
            f"{dict(self.retried) or ''}, "
            f"{self.token_refreshes} token refreshes, {self.gave_up} gave up, refused {self.refused or 'none'}",
            f"faults: {self.fault_cycles} cycles, {self.kills} kill -9, {dict(self.faults)}"
            + (f", could not apply {dict(self.faults_failed)}" if self.faults_failed else ""),
            f"all accepted orders terminal {self.seconds_to_terminal:.1f}s after heal; run took {self.run_s:.0f}s "
            f"(seed {self.seed})",
        ]
        if self.windows:
            out += [
                "",
                "fault cycles (customers' requests retried / failed for good during each cycle; "
                "- : the customers were done before it ended):",
            ]
        for w in self.windows:
            why = ", ".join(f"{n} {reason}" for reason, n in sorted(w.get("retried_by", {}).items()))
            mark = " " if w.get("under_load", True) else "-"
            line = f"{mark} {w['cycle']:>2} {w['fault']:<26} {w['seconds']:>5.1f}s"
            line += f"  {w['retried']:>4} / {w['failed']:<3}"
            line += (f" ({why})" if why else "") + (f"  {w['what']}" if w.get("what") else "")
            out.append(line.rstrip())
        out += [
            "",
            f"{'invariant':<5} {'checked':>8} {'violations':>10}  description",
        ]
        for r in self.results:
            out.append(f"{r.name:<5} {r.checked:>8} {len(r.violations):>10}  {r.description}")
            out += [f"      - {v}" for v in r.violations[:5]]
        out.append(f"total violations: {self.violations}")
        return out


class ChaosRun:
    """The shop of `meshop up` on this machine, its NATS server owned by the run."""

    def __init__(self, config: ChaosConfig, data_dir: Path, *, say: Any = print) -> None:
        self.config = config
        self.data_dir = data_dir.resolve()
        self.seed = config.seed if config.seed is not None else secrets.randbelow(2**31)
        self.rng = random.Random(self.seed)
        self.say = say
        self.password = secrets.token_urlsafe(18)
        self.prefix = f"chaos_{secrets.token_hex(4)}_"
        self.nats: EmbeddedNats | None = None
        self.shop: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.nats_url = ""

    async def run(self) -> ChaosReport:
        started = time.monotonic()
        report = ChaosReport(config=self.config, seed=self.seed)
        try:
            await self._start()
            report = await self._exercise(report)
        finally:
            await self._stop()
        report.run_s = time.monotonic() - started
        return report

    async def _start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            (self.data_dir / "gateway.url").unlink()
        self.nats = EmbeddedNats(
            self.data_dir / "nats", authorization=render_server_config(ensure_users(self.data_dir))
        )
        nats_url = self.nats_url = await self.nats.start()
        port = free_port()
        env = {
            **os.environ,
            "MESHOP_NATS_URL": nats_url,
            "MESHOP_CHAOS": "1",
            "MESHOP_ADMIN_PASSWORD": self.password,
            "MESHOP_LOG_FORMAT": "json",
            "MESHOP_LOG_LEVEL": "warning",
            # Sagas interrupted by a kill are picked up by the sweeper within seconds.
            "MESHOP_ORDERS_RESUME_IDLE_S": "5",
            "MESHOP_ORDERS_SWEEP_INTERVAL_S": "1",
            # Every customer of the run comes from 127.0.0.1; per-user limits stay on.
            "MESHOP_GATEWAY_RATE_LIMIT_PER_IP": "off",
        }
        if self.config.database_url:
            env["MESHOP_DATABASE_URL"] = self.config.database_url
            env["MESHOP_DATABASE_PREFIX"] = self.prefix
        replicas = [arg for r in self.config.replicas for arg in ("--replicas", r)]
        with (self.data_dir / "up.log").open("ab") as log:
            self.shop = subprocess.Popen(  # noqa: ASYNC220 (returns at once)
                [
                    sys.executable,
                    "-m",
                    "meshop",
                    "up",
                    "--port",
                    str(port),
                    "--data-dir",
                    str(self.data_dir),
                    *replicas,
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not (self.data_dir / "gateway.url").exists():
            if self.shop.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the shop did not start; see {self.data_dir / 'up.log'}")
            await asyncio.sleep(0.1)
        self.url = f"http://127.0.0.1:{port}"
        self.say(f"chaos | shop ready at {self.url} (NATS {nats_url}, seed {self.seed})")

    async def _exercise(self, report: ChaosReport) -> ChaosReport:
        config = self.config

        async def read_stock() -> list[dict[str, Any]]:
            async with ShopAdmin(self.url, self.password) as admin:
                rows: list[dict[str, Any]] = await admin.all("/api/inventory/admin/stock")
                return rows

        # Just started on a busy machine, the gateway may not see a users instance yet (503).
        stock = await _retrying(read_stock)
        record = Record(
            initial_total={s["sku"]: s["available"] + s["reserved"] + s["committed"] for s in stock},
            initial_committed={s["sku"]: s["committed"] for s in stock},
        )
        skus = sorted(str(p["sku"]) for p in seed_products())
        scarce = self.rng.sample(skus, 1)
        async with Workload(
            self.url,
            record,
            orders=config.orders,
            concurrency=config.concurrency,
            skus=[s for s in skus if s not in scarce],
            scarce=scarce,
            rng=self.rng,
        ) as workload:
            # The faults do not depend on the customers' timing: their own rng.
            nemesis = self._nemesis(random.Random(self.seed + 1), workload.stats)
            await workload.sign_up(config.concurrency)
            if config.load_throughout:
                workload.orders = sys.maxsize
            customers = asyncio.create_task(workload.run())
            # Faults go on while customers order, and at least `cycles` times.
            while not customers.done() or nemesis.log.cycles < config.cycles:
                before, started = counters(workload.stats), time.monotonic()
                accepted_before = workload.stats.accepted
                why = Counter(workload.stats.retried)
                applied, under_load = len(nemesis.log.faults), not customers.done()
                await nemesis.cycle()
                after = counters(workload.stats)
                if len(nemesis.log.faults) > applied:
                    name = nemesis.log.faults[-1]
                else:
                    name = f"{(nemesis.log.failed or ['?'])[-1]} (not applied)"
                detail = nemesis.log.details.get(nemesis.log.cycles, {})
                report.windows.append(
                    {
                        "cycle": nemesis.log.cycles,
                        "fault": name,
                        "seconds": round(time.monotonic() - started, 2),
                        "retried": after[0] - before[0],
                        "failed": after[1] - before[1],
                        "accepted": workload.stats.accepted - accepted_before,
                        "retried_by": dict(Counter(workload.stats.retried) - why),
                        "under_load": under_load and not customers.done(),
                        **detail,
                    }
                )
                if config.load_throughout and nemesis.log.cycles >= config.cycles:  # stop at the target
                    workload.orders = min(workload.orders, max(config.orders, workload.stats.attempted))
                if not customers.done() and nemesis.log.cycles >= config.cycles:
                    await asyncio.wait({customers}, timeout=config.fault_s + config.calm_s)
            await customers
        healed = time.monotonic()
        self.say(f"chaos | healed after {nemesis.log.cycles} cycles; waiting for quiescence")
        await self._wait_for_processes()
        async with self._admin() as admin:
            record.pending_at_bound = await self._wait_terminal(admin, record, healed)
            report.seconds_to_terminal = time.monotonic() - healed
            await self._wait_drained(admin)
            snapshot = await self._snapshot(admin)
        report.results = check_all(snapshot, record)
        stats = workload.stats
        report.attempted, report.accepted = stats.attempted, stats.accepted
        report.duplicates_sent, report.client_retries, report.gave_up = (
            stats.duplicates_sent,
            stats.client_retries,
            stats.gave_up,
        )
        report.refused = dict(stats.refused)
        report.retried = dict(stats.retried)
        report.token_refreshes = stats.token_refreshes
        report.confirmed = sum(o["status"] == "CONFIRMED" for o in snapshot.orders)
        report.cancelled = sum(o["status"] == "CANCELLED" for o in snapshot.orders)
        report.cancel_reasons = Counter(o["cancel_reason"] for o in snapshot.orders if o["status"] == "CANCELLED")
        report.fault_cycles, report.kills = nemesis.log.cycles, len(nemesis.log.kills)
        report.faults = Counter(nemesis.log.faults)
        report.faults_failed = Counter(nemesis.log.failed)
        return report

    def _nemesis(self, rng: random.Random, stats: WorkloadStats) -> Nemesis | LabNemesis:
        """Kills of the supervisor's workers plus NATS restarts, DB locks, provider faults."""
        assert self.shop is not None
        assert self.nats is not None
        return Nemesis(
            supervisor_pid=self.shop.pid,
            data_dir=self.data_dir,
            nats=self.nats,
            rng=rng,
            database_url=self.config.database_url,
            database_prefix=self.prefix,
            fault_s=self.config.fault_s,
            calm_s=self.config.calm_s,
            say=self.say,
        )

    @contextlib.asynccontextmanager
    async def _admin(self) -> AsyncIterator[ShopAdmin]:
        """The admin, logged in. The gateway's /ready is its own: users, killed last, may
        still be starting (503), so the login is tried again, as the admin's reads are."""
        admin = ShopAdmin(self.url, self.password)
        await _retrying(admin.__aenter__)
        try:
            yield admin
        finally:
            await admin.__aexit__()

    async def _wait_for_processes(self) -> None:
        """The gateway ready again. Its /ready is its own: a service killed last may still be
        starting, so every admin request after this is retried (`_admin`, `_retrying`)."""
        import aiohttp

        deadline = time.monotonic() + READY_TIMEOUT_S
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            while time.monotonic() < deadline:
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(self.url + "/ready") as resp:
                        if resp.status == 200:
                            return
                await asyncio.sleep(0.2)
        raise RuntimeError("the shop did not become ready again after healing")

    async def _wait_terminal(self, admin: ShopAdmin, record: Record, healed: float) -> list[str]:
        """Wait until no accepted order is PENDING; those still PENDING at the bound."""
        while True:
            orders = await _retrying(admin.all, "/api/orders/admin/orders")
            pending = [o["id"] for o in orders if o["status"] == "PENDING"]
            if not pending or time.monotonic() - healed > TERMINAL_BOUND_S:
                return pending
            await asyncio.sleep(0.5)

    async def _wait_drained(self, admin: ShopAdmin, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            outboxes = [await _retrying(admin.get, f"/api/{s}/admin/outbox") for s in OUTBOX_SERVICES]
            consumers = await _retrying(admin.get, "/api/users/admin/consumers")
            if not any(o["pending"] for o in outboxes) and not any(
                c["pending"] or c["unacknowledged"] for c in consumers
            ):
                return
            await asyncio.sleep(0.5)

    async def _snapshot(self, admin: ShopAdmin) -> Snapshot:
        async def pages(path: str) -> list[dict[str, Any]]:
            rows: list[dict[str, Any]] = await _retrying(admin.all, path)
            return rows

        dead = Counter(
            d["consumer"]
            for d in await dead_letters(self.nats_url, count=100_000, login=login_of(self.data_dir, "chaos"))
        )
        return Snapshot(
            orders=await pages("/api/orders/admin/orders"),
            stock=await pages("/api/inventory/admin/stock"),
            reservations=await pages("/api/inventory/admin/reservations"),
            payments=await pages("/api/payments/admin/payments"),
            shipments=await pages("/api/shipping/admin/shipments"),
            outbox_pending={
                s: (await _retrying(admin.get, f"/api/{s}/admin/outbox"))["pending"] for s in OUTBOX_SERVICES
            },
            consumers=await _retrying(admin.get, "/api/users/admin/consumers"),
            dead_letters=dict(dead),
            order_stats=await pages("/api/users/admin/order-stats"),
        )

    async def _stop(self) -> None:
        if self.shop is not None and self.shop.poll() is None:
            self.shop.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(self.shop.wait, 30)
            except subprocess.TimeoutExpired:
                self.shop.kill()
                await asyncio.to_thread(self.shop.wait)
        if self.nats is not None:
            await self.nats.stop()
        if self.config.database_url:
            await self._drop_databases()

    async def _drop_databases(self) -> None:
        server = self.config.database_url or ""
        server = server.replace("postgresql+asyncpg://", "postgresql://").rstrip("/")
        conn = await asyncpg.connect(f"{server}/postgres")
        try:
            for service in SERVICES:
                await conn.execute(f'DROP DATABASE IF EXISTS "{self.prefix}{service}" WITH (FORCE)')
        finally:
            await conn.close()


async def _retrying(fn: Any, *args: Any, attempts: int = 20) -> Any:
    """An admin read right after healing may meet a process still starting: try again."""
    for attempt in range(attempts):
        try:
            return await fn(*args)
        except Exception:
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(0.5)
    raise AssertionError("unreachable")


#: Settings of every lab process during a chaos run: sagas interrupted by a kill are picked
#: up within seconds; every customer comes from the lab's own address (per-user limits stay on).
LAB_SETTINGS = {
    "MESHOP_ORDERS_RESUME_IDLE_S": "5",
    "MESHOP_ORDERS_SWEEP_INTERVAL_S": "1",
    "MESHOP_GATEWAY_RATE_LIMIT_PER_IP": "off",
    "MESHOP_LOG_LEVEL": "warning",
}


class LabChaosRun(ChaosRun):
    """The shop on lab hosts (`meshop lab up` in `data_dir`), broken by the lab's nemesis."""

    lab: LabState | None = None

    async def _start(self) -> None:
        from meshop.lab import shop

        self.data_dir.mkdir(parents=True, exist_ok=True)
        state = await asyncio.to_thread(
            shop.up,
            self.data_dir,
            hosts=self.config.lab_hosts,
            gateways=self.config.lab_gateways,
            env=LAB_SETTINGS,
            say=self.say,
        )
        self.lab = state
        self.url, self.nats_url = state.gateway_urls[0], state.nats_url
        self.password = (self.data_dir / "admin-password").read_text().strip()
        self.say(f"chaos | lab {state.lab_id} ready, the shop at {self.url} (seed {self.seed})")

    def _nemesis(self, rng: random.Random, stats: WorkloadStats) -> Nemesis | LabNemesis:
        return LabNemesis(
            directory=self.data_dir,
            rng=rng,
            stats=stats,
            fault_s=self.config.fault_s,
            calm_s=self.config.calm_s,
            say=self.say,
        )

    async def _stop(self) -> None:
        from meshop.lab import shop

        if (self.data_dir / shop.STATE_FILE).exists():
            self.lab = shop.LabState.load(self.data_dir)  # its last pids, to check that none is left
            await asyncio.to_thread(shop.down, self.data_dir, say=self.say)
