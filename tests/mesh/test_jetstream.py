"""MESHOP_NATS_REPLICAS: every stream and bucket meshop creates has that many copies."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
import structlog
from nats.aio.client import Client as NatsClient
from nats.js.api import KeyValueConfig, StreamConfig
from nats.js.client import JetStreamContext

from meshop.mesh.errors import ConfigError
from meshop.mesh.events.outbox import ensure_event_stream, event_stream
from meshop.mesh.jetstream import ensure_stream, open_key_value
from meshop.mesh.registry.nats_kv import open_bucket
from meshop.mesh.service.settings import Settings as MeshSettings
from meshop.mesh.service.settings import from_env
from tests.mesh.nats_cluster import connect_when_ready

pytestmark = pytest.mark.integration


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[NatsClient]:
    client = await nats.connect(nats_url)
    yield client
    await client.close()


def test_the_setting_is_an_integer_from_1_to_5() -> None:
    assert from_env(MeshSettings, "MESHOP_", environ={}).nats_replicas == 1
    assert from_env(MeshSettings, "MESHOP_", environ={"MESHOP_NATS_REPLICAS": "3"}).nats_replicas == 3
    for wrong in ("0", "6", "three"):
        with pytest.raises(ConfigError, match="MESHOP_NATS_REPLICAS"):
            from_env(MeshSettings, "MESHOP_", environ={"MESHOP_NATS_REPLICAS": wrong})


async def test_one_replica_is_applied_on_a_single_server(nc: NatsClient) -> None:
    js = nc.jetstream()
    service, bucket = unique("svc"), unique("reg")
    await ensure_event_stream(js, service, replicas=1, owner=True)
    await open_bucket(nc, bucket, 2.0, replicas=1)
    assert (await js.stream_info(event_stream(service))).config.num_replicas == 1
    assert (await js.stream_info(f"KV_{bucket}")).config.num_replicas == 1


async def test_more_replicas_than_a_single_server_has_fail_naming_the_setting(nc: NatsClient) -> None:
    js = nc.jetstream()
    with pytest.raises(ConfigError, match="MESHOP_NATS_REPLICAS=3, but the NATS server is not part of"):
        await ensure_stream(
            js, StreamConfig(name=unique("S"), subjects=[f"{unique('s')}.>"], num_replicas=3), owner=True
        )
    with pytest.raises(ConfigError, match="MESHOP_NATS_REPLICAS=3"):
        await open_key_value(js, KeyValueConfig(bucket=unique("kv"), replicas=3))
    service = unique("svc")
    await ensure_event_stream(js, service, replicas=1, owner=True)
    with pytest.raises(ConfigError, match="MESHOP_NATS_REPLICAS=3"):  # raising an existing one
        await ensure_event_stream(js, service, replicas=3, owner=True)


async def test_a_process_that_does_not_own_a_stream_logs_the_fix_instead_of_raising_it(nc: NatsClient) -> None:
    js = nc.jetstream()
    service = unique("svc")
    await ensure_event_stream(js, service, replicas=1, owner=True)
    with structlog.testing.capture_logs() as logs:
        await ensure_event_stream(js, service, replicas=3, owner=False)
    assert (await js.stream_info(event_stream(service))).config.num_replicas == 1
    [warning] = [entry for entry in logs if entry["log_level"] == "warning"]
    assert warning["fix"] == f"nats stream edit {event_stream(service)} --replicas 3"


async def test_on_a_cluster_streams_and_buckets_get_the_replicas_and_owners_raise_old_ones(
    cluster: str, tmp_path: Path
) -> None:
    client = await connect_when_ready(cluster)
    try:
        js = client.jetstream()
        await ensure_event_stream(js, "orders", replicas=3, owner=True)
        assert (await js.stream_info(event_stream("orders"))).config.num_replicas == 3

        await ensure_event_stream(js, "catalog", replicas=1, owner=True)  # made before the setting
        await js.publish("meshop.events.catalog.created", b"kept")
        await ensure_event_stream(js, "catalog", replicas=3, owner=True)
        raised = await js.stream_info(event_stream("catalog"))
        assert (raised.config.num_replicas, raised.state.messages) == (3, 1)
        await ensure_event_stream(js, "catalog", replicas=1, owner=True)  # an old pod mid-rollout
        assert (await js.stream_info(event_stream("catalog"))).config.num_replicas == 3

        await open_bucket(client, "meshop_registry", 2.0, replicas=1)
        await open_bucket(client, "meshop_registry", 2.0, replicas=3)
        assert (await js.stream_info("KV_meshop_registry")).config.num_replicas == 3
        await eventually_put(js, "$KV.meshop_registry.orders.a")  # still a working bucket
    finally:
        await client.close()


async def eventually_put(js: JetStreamContext, subject: str, within_s: float = 3.0) -> None:
    """A write acknowledged within `within_s`: the stream's new raft group loses the first
    write after a scale-up (measured ~0.1 s; the registry's heartbeat retries every 0.75 s)."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            await js.publish(subject, b"{}", timeout=0.2)
            return
        except nats.errors.TimeoutError:
            if time.monotonic() > deadline:
                raise
