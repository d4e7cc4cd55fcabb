"""The default registry: a NATS JetStream key-value bucket with TTL'd keys.

Each instance writes `<service>.<instance id>` and refreshes it from a heartbeat thread
with its own event loop and NATS connection, so a busy event loop (an argon2 hash, a
slow handler) never lets a live instance expire. Every process keeps a `RegistryView`
fed by a KV watch; when a key expires the server places a purge marker (nats-server
2.11+, `limit_marker_ttl`) that reaches every watcher, so expiry needs no polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Sequence

import msgspec
import nats
import structlog
from nats.aio.client import Client as NatsClient
from nats.js.errors import BadRequestError, KeyValueLimitMarkerTTLNotSupportedError
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from meshop.mesh.errors import StateError
from meshop.mesh.registry.base import Clock, Instance, RegistryView

log = structlog.get_logger("meshop.registry")

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(Instance).decode


async def open_bucket(nc: NatsClient, bucket: str, ttl_s: float) -> KeyValue:
    """Open the registry bucket, creating it (with expiry markers when supported)."""
    js = nc.jetstream()
    with contextlib.suppress(Exception):
        return await js.key_value(bucket)
    try:
        return await js.create_key_value(bucket=bucket, ttl=ttl_s, history=1, limit_marker_ttl=1.0)
    except KeyValueLimitMarkerTTLNotSupportedError:
        log.warning("nats server has no expiry markers; relying on stale-entry filtering")
        return await js.create_key_value(bucket=bucket, ttl=ttl_s, history=1)
    except BadRequestError:  # created concurrently by another process
        return await js.key_value(bucket)


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
    ) -> None:
        if heartbeat_s * 2 > ttl_s:
            raise ValueError("heartbeat_s must be at most half of ttl_s")
        self._nc = nc
        self._servers = servers
        self._bucket = bucket
        self._ttl_s = ttl_s
        self._heartbeat_s = heartbeat_s
        self._clock = clock
        self.view = RegistryView(stale_after_s=ttl_s * 1.5)
        self._kv: KeyValue | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self._resync_task: asyncio.Task[None] | None = None
        self._synced = asyncio.Event()
        self._heartbeats: dict[str, _Heartbeat] = {}

    async def start(self) -> None:
        if self._kv is not None:
            raise StateError("registry already started")
        self._kv = await open_bucket(self._nc, self._bucket, self._ttl_s)
        self._watch_task = asyncio.create_task(self._watch(), name="registry-watch")
        await asyncio.wait_for(self._synced.wait(), timeout=10.0)

    async def stop(self) -> None:
        for heartbeat in list(self._heartbeats.values()):
            heartbeat.stop()
        self._heartbeats.clear()
        for task in (self._resync_task, self._watch_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._watch_task = self._resync_task = None
        self._kv = None

    async def disconnected(self) -> None:
        """NATS is unreachable: keep the last known view instead of letting it expire."""
        self.view.expiry_suspended = True
        log.warning("registry unreachable; keeping the last known view")

    async def reconnected(self) -> None:
        """NATS is back: re-create the bucket if it was lost, re-watch, then resume expiry."""
        if self._kv is None:
            return
        if self._resync_task is not None:
            self._resync_task.cancel()
        self._resync_task = asyncio.create_task(self._resync(), name="registry-resync")

    async def _resync(self) -> None:
        self.view.expiry_suspended = True
        if self._watch_task is not None:
            self._watch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch_task
        self._synced = asyncio.Event()
        self._kv = await open_bucket(self._nc, self._bucket, self._ttl_s)
        for heartbeat in self._heartbeats.values():  # re-register at once
            await self._kv.put(
                heartbeat.instance.key, _encode(msgspec.structs.replace(heartbeat.instance, heartbeat_at=self._clock()))
            )
        self._watch_task = asyncio.create_task(self._watch(), name="registry-watch")
        await asyncio.wait_for(self._synced.wait(), timeout=10.0)
        # Live instances re-register within a heartbeat or two; give them one TTL before
        # entries that nobody refreshed count as gone.
        await asyncio.sleep(self._ttl_s)
        self.view.expiry_suspended = False
        log.info("registry view resynchronised")

    async def register(self, instance: Instance) -> None:
        kv = self._require_kv()
        await kv.put(instance.key, _encode(msgspec.structs.replace(instance, heartbeat_at=self._clock())))
        heartbeat = _Heartbeat(instance, self._servers, self._bucket, self._heartbeat_s, self._clock, self._ttl_s)
        self._heartbeats[instance.key] = heartbeat
        heartbeat.start()

    async def deregister(self, instance: Instance) -> None:
        heartbeat = self._heartbeats.pop(instance.key, None)
        if heartbeat is not None:
            await asyncio.to_thread(heartbeat.stop)
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
        async for entry in watcher:
            if entry is None:  # the end of the initial values
                self._synced.set()
                continue
            if entry.operation in (KV_DEL, KV_PURGE) or not entry.value:
                self.view.remove(entry.key)
                continue
            try:
                self.view.put(_decode(entry.value))
            except msgspec.DecodeError:
                log.warning("ignoring malformed registration", key=entry.key)
            if entry.delta == 0:
                self._synced.set()


class _Heartbeat:
    """Refreshes one registration from its own thread, loop and NATS connection."""

    def __init__(
        self, instance: Instance, servers: str, bucket: str, interval_s: float, clock: Clock, ttl_s: float
    ) -> None:
        self.instance = instance
        self._instance = instance
        self._ttl_s = ttl_s
        self._servers = servers
        self._bucket = bucket
        self._interval_s = interval_s
        self._clock = clock
        self._stopping = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, name=f"heartbeat-{instance.key}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            with contextlib.suppress(RuntimeError):  # the loop already closed
                loop.call_soon_threadsafe(wake.set)
        self._thread.join(timeout=5.0)

    def _main(self) -> None:
        asyncio.run(self._run())

    async def _run(self) -> None:
        self._wake = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        nc = await nats.connect(
            self._servers, name=f"heartbeat-{self._instance.key}", max_reconnect_attempts=-1, reconnect_time_wait=0.5
        )
        try:
            kv: KeyValue | None = None
            while not self._stopping.is_set():
                value = msgspec.structs.replace(self._instance, heartbeat_at=self._clock())
                try:
                    if kv is None:  # (re)open: after a NATS restart the bucket may be new
                        kv = await open_bucket(nc, self._bucket, self._ttl_s)
                    await kv.put(self._instance.key, _encode(value))
                except Exception as exc:  # keep beating through NATS outages
                    kv = None
                    log.warning("heartbeat failed", key=self._instance.key, error=str(exc))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._interval_s)
        finally:
            with contextlib.suppress(Exception):
                await nc.close()
