"""`meshop status`: what a running shop has registered, and whether each is ready."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, NoKeysError
from nats.js.kv import KeyValue

from meshop.mesh.errors import ConfigError
from meshop.mesh.registry.base import Instance
from meshop.runtime.connection import NoShopError, connected, login_of, nats_url_of, unreachable


async def instances_via_nats(
    data_dir: Path, bucket: str = "meshop_registry", *, user: str = "status"
) -> list[dict[str, Any]]:
    """The instances registered with the shop running on `data_dir`, each with its health.

    `user`: the NATS user to read the registry as (`status`; the chaos harness is `chaos`).
    """
    url = nats_url_of(data_dir)
    async with connected(url, name=f"meshop-{user}", login=login_of(data_dir, user)) as nc:
        try:
            kv = await nc.jetstream().key_value(bucket)
        except BucketNotFoundError:
            raise NoShopError(f"no running shop found at {url} (NATS answers, but has no registry)") from None
        instances = await _registered(kv)
    if not instances:
        raise NoShopError(f"no running shop found at {url} (NATS answers, but no process is registered)")
    return await _with_health(instances)


async def _registered(kv: KeyValue, *, reads: int = 3, pause_s: float = 0.5) -> list[Instance]:
    """The instances in the registry. An empty answer is read again (`reads` in all, `pause_s`
    apart) before it is believed: nats-py's key listing once answered no keys for a running
    shop whose heartbeats rewrite every key each 0.75 s (seen twice in CI, under load; the
    cause is not known), and `meshop status` reported it as "no process is registered"."""
    for attempt in range(reads):
        if attempt:
            await asyncio.sleep(pause_s)
        instances = []
        for key in await _keys(kv):
            with contextlib.suppress(KeyNotFoundError):  # deregistered meanwhile
                entry = await kv.get(key)
                if entry.value:
                    instances.append(msgspec.json.decode(entry.value, type=Instance))
        if instances:
            return instances
    return []


async def _keys(kv: KeyValue, *, tries: int = 3) -> list[str]:
    """The registry's keys; none when it is empty. A read that times out (a busy server,
    a NATS node failing over) is tried again, then reported: never taken for "no instances"."""
    for attempt in range(1, tries + 1):
        try:
            return list(await kv.keys())
        except NoKeysError:
            return []
        except TimeoutError:  # nats-py's timeouts are asyncio's, the builtin's subclass
            if attempt == tries:
                raise ConfigError(f"the registry did not answer in time ({tries} tries)") from None
    raise AssertionError("unreachable")


async def instances_via_gateway(url: str) -> list[dict[str, Any]]:
    """The instances the gateway at `url` knows, each with its health."""
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(url.rstrip("/") + "/_meshop/instances", timeout=aiohttp.ClientTimeout(total=3)) as resp,
        ):
            if resp.status != 200:
                raise ConfigError(f"{url} answered {resp.status} for its instance list")
            rows = await resp.json()
    except aiohttp.ClientConnectorError as exc:
        raise unreachable(url, exc.os_error) from None
    except (aiohttp.ClientConnectionError, TimeoutError) as exc:
        raise unreachable(url, exc) from None
    instances = []
    for row in rows:
        host, _, port = row["address"].rpartition(":")
        instances.append(
            Instance(
                service=row["service"],
                instance_id=row["instance_id"],
                address=host,
                port=int(port),
                pid=row["pid"],
                zone=row.get("zone", "local"),
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
            "zone": i.zone,
            "health": h,
        }
        for i, h in ordered
    ]
