"""`meshop status`: what a running shop has registered, and whether each is ready."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import nats

from meshop.mesh.errors import ConfigError
from meshop.mesh.registry.base import Instance


async def instances_via_nats(data_dir: Path, bucket: str = "meshop_registry") -> list[dict[str, Any]]:
    url_file = data_dir / "nats.url"
    if not url_file.exists():
        raise ConfigError(f"no running shop found in {data_dir} (no nats.url); is `meshop up` running?")
    nc = await nats.connect(
        url_file.read_text().strip(), name="meshop-status", max_reconnect_attempts=0, connect_timeout=2
    )
    try:
        kv = await nc.jetstream().key_value(bucket)
        try:
            keys = await kv.keys()
        except Exception:  # nats raises NoKeysError on an empty bucket
            keys = []
        instances = []
        for key in keys:
            entry = await kv.get(key)
            if entry.value:
                instances.append(msgspec.json.decode(entry.value, type=Instance))
    finally:
        await nc.close()
    return await _with_health(instances)


async def instances_via_gateway(url: str) -> list[dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(url.rstrip("/") + "/_meshop/instances", timeout=aiohttp.ClientTimeout(total=3)) as resp,
    ):
        if resp.status != 200:
            raise ConfigError(f"{url} answered {resp.status} for its instance list")
        rows = await resp.json()
    instances = []
    for row in rows:
        host, _, port = row["address"].rpartition(":")
        instances.append(
            Instance(
                service=row["service"], instance_id=row["instance_id"], address=host, port=int(port), pid=row["pid"]
            )
        )
    return await _with_health(instances)


async def _with_health(instances: list[Instance]) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as session:

        async def health(instance: Instance) -> str:
            try:
                async with session.get(instance.url + "/ready", timeout=aiohttp.ClientTimeout(total=1)) as resp:
                    return "ready" if resp.status == 200 else f"not ready ({resp.status})"
            except (aiohttp.ClientError, TimeoutError):
                return "unreachable"

        states = await asyncio.gather(*(health(i) for i in instances))
    ordered = sorted(zip(instances, states, strict=True), key=lambda p: (p[0].service, p[0].instance_id))
    return [
        {
            "service": i.service,
            "instance_id": i.instance_id,
            "pid": i.pid,
            "address": f"{i.address}:{i.port}",
            "health": h,
        }
        for i, h in ordered
    ]
