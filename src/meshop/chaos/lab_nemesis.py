"""The lab's nemesis (`meshop chaos --lab`): faults of hosts, links and processes, each healed.

Every cycle applies the next fault in turn, holds it `fault_s`, heals it, then leaves the
shop `calm_s` before the next; the choices (which host, node or process) come from a seeded
rng. Nothing in the lab restarts anything by itself (each process runs as in a container,
with no supervisor): the nemesis restarts what it stopped, after the hold, as a kubelet
would, with the command and settings the lab recorded (`meshop.lab.shop.restart`).

1. cut a host's link for longer than the registry's TTL (2.25 s), and measure how long the
   gateway still sends to the host's instances (`/_meshop/instances`, read with the scrape
   token: `routable`, its breaker closed and the instance not ejected), how long its view
   still lists them, and what the customers saw meanwhile. Never the PostgreSQL host: the
   database is one server, a single point of failure by design in the lab; never the
   host of the gateway the customers use (the first; the only one by default): it is
   their entry point, and a client of a real shop would reach another through DNS or a
   load balancer, which the lab does not have;
2. kill -9 one NATS node, start it again after the hold;
3. partition one NATS node from the other two: its route relays drop the pair's traffic
   (SIGUSR1; SIGUSR2 heals) while clients still reach every node;
4. kill -9 one service process (not the gateway), start it again after the hold;
5. restart a whole host (not the customers' gateway's): SIGTERM every meshop process on
   it, start them again (NATS and PostgreSQL stay up: faults 2 and 7 cover them);
6. a rolling restart of every service, one replica at a time: SIGTERM, wait for the exit,
   start it again, wait until it is ready, then the next;
7. kill -9 PostgreSQL: the postmaster and every backend at once, as when the database's
   host or container dies; start it again after the hold (it recovers from its WAL), wait
   until it accepts connections. The services reconnect by themselves (decision 0039): an
   order answered 202 was committed before the answer, and must still be there (I5).
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from meshop.chaos.nemesis import FaultLog
from meshop.chaos.workload import WorkloadStats
from meshop.lab import shop
from meshop.lab.shop import NATS_MONITOR_PORT, LabProcess, LabState

#: How long the nemesis waits at most for a restarted process to be ready again.
READY_S = 90.0
#: A cut host is healed at the latest this long after its instances should have left every view.
CUT_LIMIT_S = 30.0
#: PostgreSQL's settings that make a commit answered durable across a kill -9 (read after each restart).
DURABILITY = ("fsync", "synchronous_commit", "full_page_writes", "wal_level")

Fault = Callable[[], Awaitable[dict[str, Any]]]


def counters(stats: WorkloadStats | None) -> tuple[int, int]:
    """(attempts the customers had to retry, requests that failed for good) so far."""
    if stats is None:
        return 0, 0
    return stats.client_retries, sum(stats.refused.values()) + stats.gave_up


class LabNemesis:
    def __init__(
        self,
        *,
        directory: Path,
        rng: random.Random,
        stats: WorkloadStats | None = None,
        fault_s: float = 4.5,
        calm_s: float = 2.0,
        say: Callable[[str], None] = print,
    ) -> None:
        self.directory = directory
        self.rng = rng
        self.stats = stats
        self.fault_s = fault_s
        self.calm_s = calm_s
        self.say = say
        self.log = FaultLog()
        self.faults: list[tuple[str, Fault]] = [
            ("cut a host", self._cut_host),
            ("kill -9 a NATS node", self._kill_nats),
            ("partition a NATS node", self._partition_nats),
            ("kill -9 a service process", self._kill_service),
            ("restart a host", self._restart_host),
            ("rolling restart", self._rolling_restart),
            ("kill -9 PostgreSQL", self._kill_postgres),
        ]

    def state(self) -> LabState:
        return LabState.load(self.directory)

    async def cycle(self) -> None:
        """One fault: applied, held, healed (whatever happened), then a calm pause."""
        name, fault = self.faults[self.log.cycles % len(self.faults)]
        self.log.cycles += 1
        cycle = self.log.cycles
        started = time.monotonic()
        try:
            detail = await fault()
        except Exception as exc:  # said and reported as not applied, never counted as done
            self.say(f"chaos | cycle {cycle}: could not {name}: {exc!r}")
            self.log.failed.append(name)
            detail = {"what": f"not applied: {exc!r}"}
        else:
            self.log.faults.append(name)
        detail["fault_s"] = round(time.monotonic() - started, 2)
        self.log.details[cycle] = detail
        self.say(f"chaos | cycle {cycle}: {name}: {detail['what']} ({detail['fault_s']:.1f} s)")
        await asyncio.sleep(self.calm_s)

    # The faults. Each heals what it did before it returns, also when it fails halfway.

    async def _cut_host(self) -> dict[str, Any]:
        state = self.state()
        lab = state.lab_hosts()
        spared = {state.process("postgres").host, self._entry(state).host}
        host = lab.host(self.rng.choice(sorted(h.name for h in lab.hosts if h.name not in spared)))
        token = (self.directory / "scrape-token").read_text().strip()
        url = state.gateway_urls[0] + "/_meshop/instances"
        prefix = host.address + ":"
        async with aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=2), headers={"authorization": f"Bearer {token}"}
        ) as session:

            async def listed() -> tuple[bool, bool] | None:
                """Whether the gateway lists the host's instances, and would send to one."""
                try:
                    async with session.get(url) as resp:
                        rows = await resp.json()
                except (aiohttp.ClientError, TimeoutError, ValueError):
                    return None  # the gateway did not answer this time: unknown
                mine = [row for row in rows if str(row["address"]).startswith(prefix)]
                return bool(mine), any(row["routable"] for row in mine)

            before = counters(self.stats)
            lab.cut(host)
            cut_at = time.monotonic()
            gone_s: float | None = None
            unroutable_s: float | None = None
            meanwhile = (0, 0)
            try:
                while time.monotonic() - cut_at < self.fault_s or gone_s is None:
                    seen = await listed()
                    if seen is not None and unroutable_s is None and not seen[1]:
                        unroutable_s = time.monotonic() - cut_at
                        now = counters(self.stats)
                        meanwhile = (now[0] - before[0], now[1] - before[1])
                    if seen is not None and gone_s is None and not seen[0]:
                        gone_s = time.monotonic() - cut_at
                    if time.monotonic() - cut_at > self.fault_s + CUT_LIMIT_S:
                        break
                    await asyncio.sleep(0.1)
            finally:
                lab.heal(host)
            healed_at = time.monotonic()
            back_s: float | None = None
            while time.monotonic() - healed_at < READY_S:
                seen = await listed()
                if seen is not None and seen[1]:
                    back_s = time.monotonic() - healed_at
                    break
                await asyncio.sleep(0.25)
        held = healed_at - cut_at
        on_it = ", ".join(p.name for p in state.processes if p.host == host.name)
        unroutable = (
            f"no longer sent to by the gateway after {unroutable_s:.2f} s"
            if unroutable_s is not None
            else "still sent to"
        )
        gone = f"out of its view after {gone_s:.2f} s" if gone_s is not None else "never out of its view"
        return {
            "what": f"{host.name} ({on_it}) cut for {held:.1f} s: its instances {unroutable}, {gone}; "
            f"customers retried {meanwhile[0]} and lost {meanwhile[1]} requests until then; "
            + (f"sent to again {back_s:.1f} s after the heal" if back_s is not None else "not sent to again"),
            "host": host.name,
            "held_s": round(held, 2),
            "unroutable_s": None if unroutable_s is None else round(unroutable_s, 2),
            "gone_s": None if gone_s is None else round(gone_s, 2),
            "retried_until_unroutable": meanwhile[0],
            "failed_until_unroutable": meanwhile[1],
            "back_s": None if back_s is None else round(back_s, 2),
        }

    async def _kill_nats(self) -> dict[str, Any]:
        node = self.state().process(self.rng.choice(["nats-n1", "nats-n2", "nats-n3"]))
        shop.kill(self.directory, node.name, signal.SIGKILL)
        self.log.kills.append(node.name)
        await self._exited(node.pid)
        await asyncio.sleep(self.fault_s)
        restarted = shop.restart(self.directory, node.name)
        ready_s = await self._ready(restarted, f"http://{node.address}:{NATS_MONITOR_PORT}/healthz")
        return {"what": f"kill -9 {node.name} on {node.host}, started again, healthy in {ready_s:.1f} s"}

    async def _partition_nats(self) -> dict[str, Any]:
        k = self.rng.randint(1, 3)
        relays = [f"relay-n{a}-n{b}" for a in range(1, 4) for b in range(1, 4) if a != b and k in (a, b)]
        node = self.state().process(f"nats-n{k}")
        try:
            for relay in relays:
                shop.kill(self.directory, relay, signal.SIGUSR1)
            await asyncio.sleep(self.fault_s)
        finally:
            for relay in relays:
                shop.kill(self.directory, relay, signal.SIGUSR2)
        ready_s = await self._ready(node, f"http://{node.address}:{NATS_MONITOR_PORT}/healthz")
        return {"what": f"nats-n{k} partitioned from the other nodes ({', '.join(relays)}), healed; "
                f"healthy {ready_s:.1f} s after"}  # fmt: skip

    async def _kill_service(self) -> dict[str, Any]:
        victim = self.rng.choice(self._services(self.state()))
        shop.kill(self.directory, victim.name, signal.SIGKILL)
        self.log.kills.append(victim.name)
        await self._exited(victim.pid)
        await asyncio.sleep(self.fault_s)
        ready_s = await self._ready(shop.restart(self.directory, victim.name))
        return {"what": f"kill -9 {victim.name} on {victim.host}, started again, ready in {ready_s:.1f} s"}

    async def _restart_host(self) -> dict[str, Any]:
        state = self.state()
        hosts = sorted({p.host for p in state.processes if p.kind == "service"} - {self._entry(state).host})
        host = self.rng.choice(hosts)
        victims = [p for p in state.processes if p.kind == "service" and p.host == host]
        await asyncio.gather(*(self._stop(p) for p in victims))
        await asyncio.sleep(self.fault_s)
        ready = await asyncio.gather(*(self._ready(shop.restart(self.directory, p.name)) for p in victims))
        return {
            "what": f"{host}'s {len(victims)} processes ({', '.join(p.name for p in victims)}) stopped and started "
            f"again, all ready in {max(ready):.1f} s"
        }

    async def _rolling_restart(self) -> dict[str, Any]:
        slowest = 0.0
        services = self._services(self.state())
        for process in services:
            await self._stop(process)
            slowest = max(slowest, await self._ready(shop.restart(self.directory, process.name)))
        return {"what": f"{len(services)} service processes restarted one at a time (slowest ready in {slowest:.1f} s)"}

    async def _kill_postgres(self) -> dict[str, Any]:
        database = self.state().process("postgres")
        before = self.stats.accepted if self.stats is not None else 0
        # The postmaster and every backend (each its own session: not in the group), until none is left.
        await asyncio.to_thread(shop.kill, self.directory, database.name, signal.SIGKILL)
        self.log.kills.append(database.name)
        killed_at = time.monotonic()
        await asyncio.sleep(self.fault_s)
        restarted = shop.restart(self.directory, database.name)
        restarted_at = time.monotonic()
        settings = await self._accepting(restarted)
        accepting_at = time.monotonic()
        accepted = (self.stats.accepted if self.stats is not None else 0) - before
        # The shop again: the next order the customers get accepted (their retries included).
        back_s: float | None = None
        while self.stats is not None and time.monotonic() - accepting_at < READY_S:
            if self.stats.accepted > before + accepted:
                back_s = time.monotonic() - accepting_at
                break
            await asyncio.sleep(0.05)
        back = f"the next order accepted {back_s:.1f} s after" if back_s is not None else "no order accepted after"
        return {
            "what": f"kill -9 PostgreSQL on {database.host} (postmaster and backends), started again after "
            f"{restarted_at - killed_at:.1f} s, accepting connections {accepting_at - restarted_at:.1f} s later "
            f"(recovered from its WAL), {back}; {accepted} orders accepted while it was down; "
            + ", ".join(f"{k} {v}" for k, v in settings.items()),
            "recovery_s": round(accepting_at - restarted_at, 2),
            "down_s": round(accepting_at - killed_at, 2),
            "accepted_while_down": accepted,
            "back_s": None if back_s is None else round(back_s, 2),
            "settings": settings,
        }

    # Helpers.

    @staticmethod
    def _entry(state: LabState) -> LabProcess:
        """The gateway the customers send to (the first)."""
        address = state.gateway_urls[0].removeprefix("http://")
        return next(p for p in state.processes if p.name.startswith("gateway-") and f"{p.address}:{p.port}" == address)

    @staticmethod
    def _services(state: LabState) -> list[LabProcess]:
        """Every service replica's process: not the gateway, not the console."""
        return [p for p in state.processes if p.kind == "service" and p.name.rsplit("-", 1)[0] in shop.SERVICES]

    async def _stop(self, process: LabProcess, grace_s: float = 20.0) -> None:
        """SIGTERM, as a container's stop; SIGKILL after `grace_s`."""
        shop.kill(self.directory, process.name, signal.SIGTERM)
        if not await self._exited(process.pid, grace_s):
            shop.kill(self.directory, process.name, signal.SIGKILL)
            await self._exited(process.pid)

    @staticmethod
    async def _exited(pid: int, within_s: float = 10.0) -> bool:
        deadline = time.monotonic() + within_s
        while shop.alive(pid):
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    @staticmethod
    async def _accepting(process: LabProcess) -> dict[str, str]:
        """Once restarted PostgreSQL answers a query: its durability settings (fsync, synchronous_commit, ...)."""
        deadline = time.monotonic() + READY_S
        while time.monotonic() < deadline:
            if not shop.alive(process.pid):
                raise RuntimeError(f"{process.name} exited after its restart (log: {process.log})")
            try:  # refused while it recovers ("the database system is starting up")
                conn = await asyncpg.connect(
                    host=process.address, port=process.port, user="postgres", database="postgres", timeout=1
                )
            except (OSError, TimeoutError, asyncpg.PostgresError):
                await asyncio.sleep(0.05)
                continue
            try:
                return {name: str(await conn.fetchval(f"SHOW {name}")) for name in DURABILITY}
            finally:
                await conn.close()
        raise RuntimeError(f"{process.name} did not accept connections {READY_S:g} s after its restart")

    @staticmethod
    async def _ready(process: LabProcess, url: str | None = None) -> float:
        """Seconds until the restarted process answers 200 on /ready (or `url`)."""
        url = url or f"http://{process.address}:{process.port}/ready"
        started = time.monotonic()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as session:
            while time.monotonic() - started < READY_S:
                if not shop.alive(process.pid):
                    raise RuntimeError(f"{process.name} exited after its restart (log: {process.log})")
                try:
                    async with session.get(url) as resp:
                        if resp.status == 200:
                            return time.monotonic() - started
                except (aiohttp.ClientError, TimeoutError):
                    pass
                await asyncio.sleep(0.1)
        raise RuntimeError(f"{process.name} was not ready {READY_S:g} s after its restart (log: {process.log})")
