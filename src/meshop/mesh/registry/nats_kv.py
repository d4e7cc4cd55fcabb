"""The default registry: a NATS JetStream key-value bucket with TTL'd keys.

Each instance writes `<service>.<instance id>`; one heartbeat thread per registry, with
its own event loop and NATS connection, refreshes them, so a busy event loop (an argon2
hash, a slow handler) never lets a live instance expire. Every process keeps a
`RegistryView` fed by a KV watch; when a key expires the server places a purge marker
(nats-server 2.11+, `limit_marker_ttl`) that reaches every watcher, so expiry needs no
polling. The bucket is in memory (decision 0009).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
from collections.abc import Callable, Sequence

import msgspec
import nats
import structlog
from nats.aio.client import Client as NatsClient
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import KeyValueLimitMarkerTTLNotSupportedError
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from meshop.mesh.errors import StateError
from meshop.mesh.jetstream import open_key_value, stop_watcher
from meshop.mesh.registry.base import Clock, ExpiryGuard, Instance, RegistryView
from meshop.mesh.security.nats_auth import LIVENESS, NatsLogin
from meshop.mesh.security.nats_auth import servers as server_urls

log = structlog.get_logger("meshop.registry")

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(Instance).decode


async def open_bucket(
    nc: NatsClient, bucket: str, ttl_s: float, *, replicas: int = 1, timeout_s: float = 5.0
) -> KeyValue:
    """Open the registry bucket, creating it (with expiry markers when supported).

    The bucket is in memory (decision 0009): every entry lives one TTL unless its owner
    refreshes it, so nothing in it is worth a disk write per heartbeat. When NATS
    restarts, the bucket is re-created and live instances write themselves back.
    `replicas`: its copies on a JetStream cluster (MESHOP_NATS_REPLICAS; mesh.jetstream);
    `timeout_s`: how long a write waits for the cluster's acknowledgement.
    """
    js = nc.jetstream(timeout=timeout_s)
    config = KeyValueConfig(bucket=bucket, ttl=ttl_s, history=1, storage=StorageType.MEMORY, replicas=replicas)
    try:
        return await open_key_value(js, config, limit_marker_ttl=1.0)
    except KeyValueLimitMarkerTTLNotSupportedError:
        log.warning("nats server has no expiry markers; relying on stale-entry filtering")
        return await open_key_value(js, config)


class NatsKvRegistry:
    """Registration and discovery on a NATS KV bucket."""

    def __init__(
        self,
        nc: NatsClient,
        *,
        servers: str,
        bucket: str = "meshop_registry",
        ttl_s: float = 3.0,
        heartbeat_s: float = 1.0,
        clock: Clock = time.time,
        login: NatsLogin | None = None,
        replicas: int = 1,
    ) -> None:
        """`login`: how the heartbeat's own connection logs in (the process's user; None: anonymous);
        `replicas`: the bucket's copies on a JetStream cluster (MESHOP_NATS_REPLICAS)."""
        if heartbeat_s * 2 > ttl_s:
            raise ValueError("heartbeat_s must be at most half of ttl_s")
        self._nc = nc
        self._servers = servers
        self._bucket = bucket
        self._ttl_s = ttl_s
        self._replicas = replicas
        self._heartbeat_s = heartbeat_s
        self._clock = clock
        self._login = login or NatsLogin()
        self.view = RegistryView(stale_after_s=ttl_s * 1.5)
        self._expiries = ExpiryGuard(self.view, window_s=heartbeat_s)
        self._kv: KeyValue | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self._resync_task: asyncio.Task[None] | None = None
        self._synced = asyncio.Event()
        self._heartbeat: _Heartbeat | None = None
        #: Why expiry is suspended ("disconnected", "heartbeat", "watch", "mass expiry"): the view
        #: keeps what it knows while the registry itself is what fails.
        self._suspended: set[str] = set()
        self._resume_task: asyncio.Task[None] | None = None
        self._mass_expiry_task: asyncio.Task[None] | None = None
        self._watch_check_task: asyncio.Task[None] | None = None

    def _suspend(self, reason: str, *, on: bool) -> None:
        (self._suspended.add if on else self._suspended.discard)(reason)
        self.view.expiry_suspended = bool(self._suspended)

    async def start(self) -> None:
        if self._kv is not None:
            raise StateError("registry already started")
        self._kv = await open_bucket(self._nc, self._bucket, self._ttl_s, replicas=self._replicas)
        self._heartbeat = _Heartbeat(
            servers=self._servers,
            bucket=self._bucket,
            interval_s=self._heartbeat_s,
            clock=self._clock,
            ttl_s=self._ttl_s,
            login=self._login,
            replicas=self._replicas,
            on_failing=self._from_heartbeat_thread(),
        )
        self._heartbeat.start()
        self._watch_task = asyncio.create_task(self._watch(), name="registry-watch")
        await asyncio.wait_for(self._synced.wait(), timeout=10.0)
        self._watch_check_task = asyncio.create_task(self._check_watch(), name="registry-watch-check")

    async def stop(self) -> None:
        if self._heartbeat is not None:
            await asyncio.to_thread(self._heartbeat.stop)
            self._heartbeat = None
        for task in (self._resync_task, self._watch_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for task in (self._resume_task, self._mass_expiry_task, self._watch_check_task):
            if task is not None:
                task.cancel()
        self._watch_task = self._resync_task = self._resume_task = self._mass_expiry_task = None
        self._watch_check_task = None
        self._kv = None

    def _from_heartbeat_thread(self) -> Callable[[bool], None]:
        loop = asyncio.get_running_loop()

        def report(failing: bool) -> None:
            loop.call_soon_threadsafe(self._heartbeat_failing, failing)

        return report

    def _heartbeat_failing(self, failing: bool) -> None:
        """This process's heartbeat cannot write (or can again): on a cluster, the bucket's
        leader is gone until the others elect one, several seconds in which every entry
        ages past the TTL and is expired as the new leader takes over. A registry that
        cannot take writes says nothing of the instances: keep them until writes work
        again, then one TTL more, for live instances to write themselves back."""
        if self._kv is None:
            return
        if self._resume_task is not None:
            self._resume_task.cancel()
            self._resume_task = None
        if failing:
            if "heartbeat" not in self._suspended:
                log.warning("registry writes failing; keeping the last known view")
            self._suspend("heartbeat", on=True)
        elif "heartbeat" in self._suspended:
            self._resume_task = asyncio.create_task(self._resume_after_ttl(), name="registry-resume")

    async def _resume_after_ttl(self) -> None:
        await asyncio.sleep(self._ttl_s)
        self._suspend("heartbeat", on=False)
        log.info("registry writes work again; expiry resumed")

    def _mass_expiry(self) -> None:
        """Most of the view expired at once (`ExpiryGuard`): hold it for a TTL, in which live
        instances write themselves back; what nobody refreshed is stale after it."""
        log.warning("most of the registry expired at once; keeping the last known view for a TTL")
        self._suspend("mass expiry", on=True)
        if self._mass_expiry_task is not None:
            self._mass_expiry_task.cancel()
        self._mass_expiry_task = asyncio.create_task(self._end_mass_expiry(), name="registry-mass-expiry")

    async def _end_mass_expiry(self) -> None:
        await asyncio.sleep(self._ttl_s)
        self._suspend("mass expiry", on=False)
        log.info("expiry resumed after a mass expiry")

    async def _check_watch(self) -> None:
        """Trust expiry only while the watch delivers this process's own heartbeats.

        The heartbeat writes over a connection of its own: it can work again while the
        connection that carries the watch still hangs on a server that was cut off, and
        then every entry would age out of a view that hears nothing (the lab saw the
        gateway answer 503 for every service for 3.5 s that way). The own instances' puts
        are the watch's pulse: silent for two and a half heartbeats, expiry is suspended; heard
        again, it resumes a TTL later, when every live instance has been heard too.
        """
        silent_after_s = 2.5 * self._heartbeat_s
        while True:
            await asyncio.sleep(self._heartbeat_s / 2)
            own = self._heartbeat.instances() if self._heartbeat is not None else []
            ages = [self.view.age(i.key) for i in own]
            if not ages or None in ages:  # nothing of its own yet, or just (de)registered
                continue
            silent = min(a for a in ages if a is not None) > silent_after_s
            if silent and "watch" not in self._suspended:
                log.warning("registry watch silent; keeping the last known view")
                self._suspend("watch", on=True)
            elif not silent and "watch" in self._suspended:
                await asyncio.sleep(self._ttl_s)
                self._suspend("watch", on=False)
                log.info("registry watch heard again; expiry resumed")

    async def disconnected(self) -> None:
        """NATS is unreachable: keep the last known view instead of letting it expire."""
        if self._kv is None:  # stopped: the connection closing is the process's own doing
            return
        self._suspend("disconnected", on=True)
        log.warning("registry unreachable; keeping the last known view")

    async def reconnected(self) -> None:
        """NATS is back: re-create the bucket if it was lost, re-watch, then resume expiry."""
        if self._kv is None:
            return
        if self._resync_task is not None:
            self._resync_task.cancel()
        self._resync_task = asyncio.create_task(self._resync(), name="registry-resync")

    async def _resync(self) -> None:
        self._suspend("disconnected", on=True)
        delay_s = 0.2
        while True:  # until it works: NATS may be back before JetStream answers
            await self._cancel_watch()
            try:
                self._synced = asyncio.Event()
                # A memory bucket does not survive a NATS restart: this re-creates it.
                self._kv = await open_bucket(self._nc, self._bucket, self._ttl_s, replicas=self._replicas)
                for instance in self._heartbeat.instances() if self._heartbeat is not None else ():  # re-register
                    await self._kv.put(
                        instance.key, _encode(msgspec.structs.replace(instance, heartbeat_at=self._clock()))
                    )
                self._watch_task = asyncio.create_task(self._watch(), name="registry-watch")
                await asyncio.wait_for(self._synced.wait(), timeout=10.0)
                break
            except Exception as exc:  # the last known view stays meanwhile
                log.warning("registry resync failed; retrying", error=repr(exc), retry_in_s=delay_s)
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, 5.0)
        # Live instances re-register within a heartbeat or two; give them one TTL before
        # entries that nobody refreshed count as gone.
        await asyncio.sleep(self._ttl_s)
        self._suspend("disconnected", on=False)
        log.info("registry view resynchronised")

    async def _cancel_watch(self) -> None:
        task, self._watch_task = self._watch_task, None
        if task is not None:
            task.cancel()
            await asyncio.wait({task})  # (does not raise what a failed watch raised)
            if not task.cancelled() and task.exception() is not None:
                log.warning("registry watch had failed", error=repr(task.exception()))

    async def register(self, instance: Instance) -> None:
        """Write `instance` (one KV put, acknowledged) and keep it refreshed until deregistered."""
        kv = self._require_kv()
        await kv.put(instance.key, _encode(msgspec.structs.replace(instance, heartbeat_at=self._clock())))
        assert self._heartbeat is not None  # set with the bucket
        self._heartbeat.add(instance)

    async def deregister(self, instance: Instance) -> None:
        if self._heartbeat is not None:
            await asyncio.to_thread(self._heartbeat.remove, instance.key)
        with contextlib.suppress(Exception):
            await self._require_kv().delete(instance.key)
        self.view.remove(instance.key)

    def instances(self, service: str) -> Sequence[Instance]:
        return self.view.instances(service)

    def _require_kv(self) -> KeyValue:
        if self._kv is None:
            raise StateError("registry is not started")
        return self._kv

    async def _watch(self) -> None:
        watcher = await self._require_kv().watchall()
        try:
            async for entry in watcher:
                if entry is None:  # the end of the initial values
                    self._synced.set()
                    continue
                if entry.operation == KV_PURGE:  # an expiry (MaxAge marker)
                    # while the registry fails, or with most of the view: not a death
                    if not self.view.expiry_suspended and self._expiries.expire(entry.key):
                        self._mass_expiry()
                    continue
                if entry.operation == KV_DEL or not entry.value:
                    self.view.remove(entry.key)
                    continue
                try:
                    self.view.put(_decode(entry.value), revision=entry.revision)
                except msgspec.DecodeError:
                    log.warning("ignoring malformed registration", key=entry.key)
                if entry.delta == 0:
                    self._synced.set()
        finally:
            await stop_watcher(watcher)


class _Heartbeat:
    """Refreshes every registration of this process from one thread, loop and NATS connection.

    Started with the registry, so `register()` only hands it an instance (no thread start
    on the caller's path); it connects once it has something to refresh. Removing an
    instance waits for a round already refreshing it, so a deregistered key is never
    written again after its delete.
    """

    def __init__(
        self,
        *,
        servers: str,
        bucket: str,
        interval_s: float,
        clock: Clock,
        ttl_s: float,
        login: NatsLogin,
        replicas: int,
        on_failing: Callable[[bool], object] | None = None,
    ) -> None:
        """`on_failing(True)` when a round fails after rounds that worked (or at first),
        `on_failing(False)` when one works again; called from the heartbeat's thread."""
        self._servers = servers
        self._on_failing = on_failing
        self._failing = False
        self._login = login
        self._bucket = bucket
        self._interval_s = interval_s
        self._clock = clock
        self._ttl_s = ttl_s
        self._replicas = replicas
        #: The servers in the order the next connection tries them: shuffled once, so that
        #: processes spread over a cluster; one that failed a round goes last.
        self._order = server_urls(self._servers)
        random.shuffle(self._order)
        self._instances: dict[str, Instance] = {}  # mutated by the caller's loop, read by the thread
        self._round = threading.Lock()  # held by the thread while it writes
        self._stopping = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._wake = asyncio.Event()
        self._thread = threading.Thread(target=self._main, name=f"registry-heartbeat-{bucket}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def add(self, instance: Instance) -> None:
        """Refresh `instance` from the next round on (at most one interval away)."""
        self._instances[instance.key] = instance

    def remove(self, key: str) -> None:
        """Stop refreshing `key`; blocks until a round that may be writing it has ended."""
        self._instances.pop(key, None)
        if self._round.acquire(timeout=5.0):
            self._round.release()

    def instances(self) -> list[Instance]:
        return list(self._instances.values())

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.ident is None:  # never started
            self._loop.close()
            return
        with contextlib.suppress(RuntimeError):  # the loop already closed
            self._loop.call_soon_threadsafe(self._wake.set)
        self._thread.join(timeout=5.0)

    def _report(self, *, failing: bool) -> None:
        if failing != self._failing and self._on_failing is not None:
            with contextlib.suppress(RuntimeError):  # the registry's loop has closed
                self._on_failing(failing)
        self._failing = failing

    def _demote(self, nc: NatsClient) -> None:
        """Move the server `nc` is connected to (unknown: the first tried) to the end of the order."""
        current = nc.connected_url
        failed = next((u for u in self._order if current and u.endswith("//" + current.netloc)), self._order[0])
        self._order.remove(failed)
        self._order.append(failed)

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._run())
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
        finally:
            self._loop.close()

    async def _run(self) -> None:
        nc: NatsClient | None = None
        kv: KeyValue | None = None
        try:
            while not self._stopping.is_set():
                if self._instances:
                    with self._round:
                        try:
                            if nc is None:
                                nc = await nats.connect(
                                    list(self._order),
                                    name=f"registry-heartbeat-{self._bucket}",
                                    dont_randomize=True,
                                    connect_timeout=1,
                                    max_reconnect_attempts=-1,
                                    reconnect_time_wait=0.5,
                                    **LIVENESS,
                                    **self._login.options(),
                                )
                            if kv is None:  # (re)open: after a NATS restart the bucket may be new
                                kv = await open_bucket(
                                    nc, self._bucket, self._ttl_s, replicas=self._replicas, timeout_s=self._ttl_s / 3
                                )
                            now = self._clock()
                            for instance in list(self._instances.values()):
                                await kv.put(instance.key, _encode(msgspec.structs.replace(instance, heartbeat_at=now)))
                            self._report(failing=False)
                        except Exception as exc:  # keep beating through NATS outages
                            kv = None
                            self._report(failing=True)
                            log.warning("heartbeat failed", bucket=self._bucket, error=str(exc))
                            if nc is not None and len(self._order) > 1:
                                # Its server may be cut off (nothing resets the connection, and
                                # pings notice only seconds later, after the TTL): the next round
                                # connects afresh, to the other servers first.
                                self._demote(nc)
                                with contextlib.suppress(Exception):
                                    await asyncio.wait_for(nc.close(), 0.5)
                                nc = None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._interval_s)
        finally:
            if nc is not None:
                with contextlib.suppress(Exception):
                    await nc.close()
