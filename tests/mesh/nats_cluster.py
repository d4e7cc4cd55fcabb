"""A 3-node JetStream cluster on loopback, for tests of what only a cluster does (R3 streams)."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import nats
from nats.aio.client import Client as NatsClient

from meshop.runtime.nats_server import die_with_parent, find_binary, free_port


@contextmanager
def running_cluster(store: Path) -> Iterator[str]:
    """Three servers with JetStream, routed to each other; the URL of the first, once the
    cluster's meta leader is elected (about 2 s). Requests reach the leaders over routes."""
    binary = find_binary()
    routes_ports = [free_port() for _ in range(3)]
    client_ports = [free_port() for _ in range(3)]
    routes = ",".join(f"nats://127.0.0.1:{port}" for port in routes_ports)
    logs = [(store / f"n{i}.log").open("wb") for i in range(3)]
    processes = [
        subprocess.Popen(
            [
                str(binary),
                *("-a", "127.0.0.1", "-p", str(client_ports[i]), "-js", "-sd", str(store / f"n{i}")),
                *("--server_name", f"n{i}", "--cluster_name", "meshop"),
                *("--cluster", f"nats://127.0.0.1:{routes_ports[i]}", "--routes", routes),
            ],
            stdout=subprocess.DEVNULL,
            stderr=logs[i],
            preexec_fn=die_with_parent,
        )
        for i in range(3)
    ]
    for log in logs:  # the servers hold their own copies
        log.close()
    try:
        url = f"nats://127.0.0.1:{client_ports[0]}"
        asyncio.run(_ready(url))
        yield url
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=10)


async def _ready(url: str) -> None:
    client = await connect_when_ready(url, timeout_s=20.0)
    await client.close()


async def connect_when_ready(url: str, timeout_s: float = 10.0) -> NatsClient:
    """A connection once JetStream's meta leader is elected (it answers account info)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            client = await nats.connect(url, connect_timeout=0.5, max_reconnect_attempts=0, allow_reconnect=False)
            try:
                await client.jetstream(timeout=0.25).account_info()
                return client
            except Exception:
                await client.close()
                raise
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)
