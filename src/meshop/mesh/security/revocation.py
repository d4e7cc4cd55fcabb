"""Revoked access tokens, denied by every process until they expire.

Logging out puts the access token's `jti` into a NATS KV bucket (value: its expiry). Every
process watches the bucket and keeps the set in memory, so checking a token stays a dict
lookup; an entry is dropped when its token would have expired anyway, and the bucket's
own TTL removes it from NATS. On reconnect the watch is re-created from the bucket.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import structlog
from nats.aio.client import Client as NatsClient
from nats.js.api import KeyValueConfig
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from meshop.mesh.jetstream import open_key_value, stop_watcher

log = structlog.get_logger("meshop.revocation")

Clock = Callable[[], float]


class RevocationList:
    def __init__(
        self,
        nc: NatsClient,
        *,
        bucket: str = "meshop_revoked",
        max_token_ttl_s: float = 3600.0,
        clock: Clock = time.time,
        replicas: int = 1,
    ) -> None:
        """`replicas`: of the bucket (MESHOP_NATS_REPLICAS; every process owns it, see mesh.jetstream)."""
        self._nc = nc
        self._replicas = replicas
        self._bucket = bucket
        self._ttl_s = max_token_ttl_s
        self._clock = clock
        self._denied: dict[str, float] = {}
        self._kv: KeyValue | None = None
        self._task: asyncio.Task[None] | None = None
        self._synced = asyncio.Event()

    async def start(self) -> None:
        self._kv = await self._open()
        self._task = asyncio.create_task(self._watch(), name="revocation-watch")
        await asyncio.wait_for(self._synced.wait(), timeout=10.0)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def reconnected(self) -> None:
        """NATS is back (maybe restarted): watch again from the bucket's current state."""
        if self._kv is None:
            return
        await self.stop()
        self._synced = asyncio.Event()
        self._kv = await self._open()
        self._task = asyncio.create_task(self._watch(), name="revocation-watch")

    def __contains__(self, jti: object) -> bool:
        if not isinstance(jti, str):
            return False
        expires = self._denied.get(jti)
        if expires is None:
            return False
        if expires <= self._clock():
            del self._denied[jti]
            return False
        return True

    async def revoke(self, jti: str, expires_at: float) -> None:
        """Deny `jti` everywhere until `expires_at` (acknowledged by NATS before returning)."""
        if self._kv is None:
            raise RuntimeError("the revocation list is not started")
        self._denied[jti] = expires_at
        await self._kv.put(jti, repr(expires_at).encode())

    async def _open(self) -> KeyValue:
        config = KeyValueConfig(bucket=self._bucket, ttl=self._ttl_s, history=1, replicas=self._replicas)
        return await open_key_value(self._nc.jetstream(), config)

    async def _watch(self) -> None:
        assert self._kv is not None
        watcher = await self._kv.watchall()
        try:
            async for entry in watcher:
                if entry is None:
                    self._synced.set()
                    continue
                if entry.operation in (KV_DEL, KV_PURGE) or not entry.value:
                    self._denied.pop(entry.key, None)
                else:
                    try:
                        self._denied[entry.key] = float(entry.value)
                    except ValueError:
                        log.warning("ignoring a malformed revocation", jti=entry.key)
                if entry.delta == 0:
                    self._synced.set()
        finally:
            await stop_watcher(watcher)
