"""NatsKvRegistry against a real nats-server (this session's own)."""

from __future__ import annotations

import asyncio
import os
import time

import msgspec
import nats
import pytest
import structlog.testing
from nats.js.api import StorageType
from nats.js.kv import KeyValue

from meshop.mesh.registry import Instance, NatsKvRegistry
from meshop.mesh.security.nats_auth import servers
from meshop.mesh.testing import eventually
from meshop.runtime.nats_server import free_port

pytestmark = pytest.mark.integration


def instance(instance_id: str = "i1") -> Instance:
    return Instance(
        service="catalog", instance_id=instance_id, address="127.0.0.1", port=9, pid=os.getpid(), started_at=time.time()
    )


async def heard_so_far(kv: KeyValue, registry: NatsKvRegistry) -> None:
    """Until `registry`'s view has applied every write to `kv` so far: a watch delivers in
    order, so it has once it hears a marker written after them (removed again)."""
    marker = Instance(service="marker", instance_id="m", address="127.0.0.1", port=9, pid=0)
    await kv.put(marker.key, msgspec.json.encode(marker))
    await eventually(lambda: registry.instances("marker"), within_s=5.0)
    await kv.delete(marker.key)
    await eventually(lambda: not registry.instances("marker"), within_s=5.0)


async def test_a_registration_reaches_another_process_view_and_leaves_on_deregister(nats_url: str, bucket: str) -> None:
    nc_a, nc_b = await nats.connect(nats_url), await nats.connect(nats_url)
    a = NatsKvRegistry(nc_a, servers=nats_url, bucket=bucket, ttl_s=2.0, heartbeat_s=0.5)
    b = NatsKvRegistry(nc_b, servers=nats_url, bucket=bucket, ttl_s=2.0, heartbeat_s=0.5)
    await a.start()
    await b.start()
    try:
        await a.register(instance())
        await eventually(lambda: len(b.instances("catalog")) == 1, within_s=2.0)
        assert b.instances("catalog")[0].pid == os.getpid()
        await a.deregister(instance())
        await eventually(lambda: b.instances("catalog") == [], within_s=2.0)
    finally:
        await a.stop()
        await b.stop()
        await nc_a.close()
        await nc_b.close()


async def test_an_instance_that_stops_heartbeating_expires_from_every_view(nats_url: str, bucket: str) -> None:
    nc_a, nc_b = await nats.connect(nats_url), await nats.connect(nats_url)
    a = NatsKvRegistry(nc_a, servers=nats_url, bucket=bucket, ttl_s=1.5, heartbeat_s=0.5)
    b = NatsKvRegistry(nc_b, servers=nats_url, bucket=bucket, ttl_s=1.5, heartbeat_s=0.5)
    await a.start()
    await b.start()
    try:
        await a.register(instance())
        await eventually(lambda: len(b.instances("catalog")) == 1, within_s=2.0)
        # A crash: the heartbeat stops and nobody deletes the key.
        assert a._heartbeat is not None
        await asyncio.to_thread(a._heartbeat.stop)
        cut_at = time.monotonic()
        await eventually(lambda: b.instances("catalog") == [], within_s=6.0)
        gone_after = time.monotonic() - cut_at
        assert gone_after < 4.5  # within 3 heartbeats of the TTL, generously bounded
    finally:
        await a.stop()
        await b.stop()
        await nc_a.close()
        await nc_b.close()


async def test_a_blocked_event_loop_does_not_let_a_live_instance_expire(nats_url: str, bucket: str) -> None:
    nc_a, nc_b = await nats.connect(nats_url), await nats.connect(nats_url)
    a = NatsKvRegistry(nc_a, servers=nats_url, bucket=bucket, ttl_s=1.0, heartbeat_s=0.25)
    await a.start()
    try:
        await a.register(instance())
        time.sleep(2.5)  # noqa: ASYNC251 -- a CPU-bound handler holding the loop for 2.5 TTLs
        kv = await nc_b.jetstream().key_value(bucket)
        entry = await kv.get(instance().key)
        assert entry.value
        assert time.time() - msgspec.json.decode(entry.value)["heartbeat_at"] < 1.0
    finally:
        await a.stop()
        await nc_a.close()
        await nc_b.close()


async def test_views_survive_a_nats_outage_and_resynchronise_after_it(tmp_path, bucket: str) -> None:  # type: ignore[no-untyped-def]
    """NATS dies for longer than the TTL, then comes back on the same port and store."""
    from meshop.runtime.nats_server import EmbeddedNats, free_port

    port = free_port()
    server = EmbeddedNats(tmp_path / "store", port=port)
    url = await server.start()
    registries: list[NatsKvRegistry] = []
    connections = []

    async def member() -> NatsKvRegistry:
        holder: list[NatsKvRegistry] = []

        async def on_disconnect() -> None:
            await holder[0].disconnected()

        async def on_reconnect() -> None:
            await holder[0].reconnected()

        nc = await nats.connect(
            url,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.2,
            disconnected_cb=on_disconnect,
            reconnected_cb=on_reconnect,
        )
        registry = NatsKvRegistry(nc, servers=url, bucket=bucket, ttl_s=1.5, heartbeat_s=0.5)
        holder.append(registry)
        await registry.start()
        registries.append(registry)
        connections.append(nc)
        return registry

    try:
        a, b = await member(), await member()
        await a.register(instance("live"))
        await eventually(lambda: len(b.instances("catalog")) == 1, within_s=3.0)
        await server.stop()
        await asyncio.sleep(3.0)  # twice the TTL: every registration would have expired
        assert [i.instance_id for i in b.instances("catalog")] == ["live"]  # last known view kept
        server = EmbeddedNats(tmp_path / "store", port=port)
        await server.start()
        await asyncio.sleep(2.5)  # reconnect, re-watch, re-register, grace of one TTL
        assert [i.instance_id for i in b.instances("catalog")] == ["live"]
        await a.register(instance("new"))  # the re-created watch delivers new registrations
        await eventually(lambda: len(b.instances("catalog")) == 2, within_s=3.0)
    finally:
        for registry in registries:
            await registry.stop()
        for nc in connections:
            await nc.close()
        await server.stop()


async def test_one_heartbeat_keeps_every_instance_of_a_process_alive_and_stops_on_deregister(
    nats_url: str, bucket: str
) -> None:
    nc_a, nc_b = await nats.connect(nats_url), await nats.connect(nats_url)
    a = NatsKvRegistry(nc_a, servers=nats_url, bucket=bucket, ttl_s=1.0, heartbeat_s=0.25)
    b = NatsKvRegistry(nc_b, servers=nats_url, bucket=bucket, ttl_s=1.0, heartbeat_s=0.25)
    await a.start()
    await b.start()
    try:
        await a.register(instance("i1"))
        await a.register(instance("i2"))
        await asyncio.sleep(2.5)  # 2.5 TTLs: only refreshed keys are still there
        assert sorted(i.instance_id for i in b.instances("catalog")) == ["i1", "i2"]
        await a.deregister(instance("i1"))
        await asyncio.sleep(1.0)  # a heartbeat must not write the deregistered key back
        assert [i.instance_id for i in b.instances("catalog")] == ["i2"]
        kv = await nc_b.jetstream().key_value(bucket)
        assert sorted(await kv.keys()) == ["catalog.i2"]
    finally:
        await a.stop()
        await b.stop()
        await nc_a.close()
        await nc_b.close()


async def test_the_bucket_is_created_in_memory_with_one_value_per_key(nats_url: str, bucket: str) -> None:
    nc = await nats.connect(nats_url)
    registry = NatsKvRegistry(nc, servers=nats_url, bucket=bucket, ttl_s=3.0, heartbeat_s=1.0)
    await registry.start()
    try:
        info = await nc.jetstream().stream_info(f"KV_{bucket}")
        assert info.config.storage == StorageType.MEMORY  # decision 0009
        assert info.config.max_msgs_per_subject == 1
        assert info.config.max_age == 3.0
    finally:
        await registry.stop()
        await nc.close()


async def test_a_stopped_registry_leaves_no_watch_to_block_the_connection_drain(nats_url: str, bucket: str) -> None:
    # A KV watch whose reader is gone fills its queue (256 updates) and then blocks, and
    # a connection draining at stop waits for it until the drain times out.
    reported: list[Exception] = []

    async def error_cb(exc: Exception) -> None:
        reported.append(exc)

    nc = await nats.connect(nats_url, drain_timeout=2, error_cb=error_cb)
    writer = await nats.connect(nats_url)
    registry = NatsKvRegistry(nc, servers=nats_url, bucket=bucket, ttl_s=2.0, heartbeat_s=0.5)
    await registry.start()
    await registry.stop()
    try:
        kv = await writer.jetstream().key_value(bucket)
        for n in range(300):  # what other instances' heartbeats write in a few seconds
            await kv.put(f"catalog.x{n % 10}", msgspec.json.encode(instance(f"x{n % 10}")))
        await asyncio.sleep(0.2)  # a while for a watch left behind to be sent them (nothing tells)
        started = time.monotonic()
        await nc.drain()
        assert time.monotonic() - started < 1.0
        assert reported == []
    finally:
        await writer.close()


async def test_a_connection_closed_after_the_registry_stopped_is_no_outage(nats_url: str, bucket: str) -> None:
    """A process's own stop closes its NATS connection: no "registry unreachable" warning."""
    registry: NatsKvRegistry | None = None

    async def disconnected() -> None:  # wired as a service wires it
        if registry is not None:
            await registry.disconnected()

    nc = await nats.connect(nats_url, disconnected_cb=disconnected)
    registry = NatsKvRegistry(nc, servers=nats_url, bucket=bucket, ttl_s=2.0, heartbeat_s=0.5)
    await registry.start()
    await registry.stop()
    with structlog.testing.capture_logs() as logs:
        await nc.drain()
    assert [entry["event"] for entry in logs if entry["log_level"] == "warning"] == []
    assert not registry.view.expiry_suspended


def test_a_cluster_url_is_its_servers_comma_separated() -> None:
    assert servers("nats://a:4222") == ["nats://a:4222"]
    assert servers(" nats://a:4222, nats://b:4222 ,") == ["nats://a:4222", "nats://b:4222"]


async def test_heartbeats_reach_the_servers_that_answer_when_the_first_one_is_down(nats_url: str, bucket: str) -> None:
    """MESHOP_NATS_URL names a cluster's servers: a process whose first server is down still registers."""
    cluster = f"nats://127.0.0.1:{free_port()},{nats_url}"  # nothing listens on the first
    nc_a, nc_b = await nats.connect(servers(cluster)), await nats.connect(nats_url)
    a = NatsKvRegistry(nc_a, servers=cluster, bucket=bucket, ttl_s=1.0, heartbeat_s=0.25)
    b = NatsKvRegistry(nc_b, servers=nats_url, bucket=bucket, ttl_s=1.0, heartbeat_s=0.25)
    await a.start()
    await b.start()
    try:
        await a.register(instance())
        await asyncio.sleep(2.5)  # 2.5 TTLs: only a key the heartbeat refreshed is still there
        assert [i.instance_id for i in b.instances("catalog")] == [instance().instance_id]
    finally:
        await a.stop()
        await b.stop()
        await nc_a.close()
        await nc_b.close()


async def test_expiries_while_the_registry_takes_no_writes_are_not_deaths(nats_url: str, bucket: str) -> None:
    """On a cluster, the bucket is leaderless for seconds after a node is lost: every entry
    ages past the TTL and the new leader expires them all. A view whose own heartbeat is
    failing then keeps its instances (the lab test cuts a NATS host for real); an explicit
    deregistration still removes at once."""
    nc_a, nc_b = await nats.connect(nats_url), await nats.connect(nats_url)
    a = NatsKvRegistry(nc_a, servers=nats_url, bucket=bucket, ttl_s=1.0, heartbeat_s=0.25)
    await a.start()
    try:
        kv = await nc_b.jetstream().key_value(bucket)
        await kv.put("catalog.other", msgspec.json.encode(instance("other")))
        await eventually(lambda: len(a.instances("catalog")) == 1, within_s=2.0)
        a._heartbeat_failing(True)  # what the heartbeat's thread reports when its writes time out
        await kv.purge("catalog.other")  # what a MaxAge expiry looks like to a watcher
        await heard_so_far(kv, a)
        assert [i.instance_id for i in a.instances("catalog")] == ["other"]
        await kv.put("catalog.gone", msgspec.json.encode(instance("gone")))
        await eventually(lambda: len(a.instances("catalog")) == 2, within_s=2.0)
        await kv.delete("catalog.gone")  # a deregistration is not an expiry
        await eventually(lambda: [i.instance_id for i in a.instances("catalog")] == ["other"], within_s=2.0)
        a._heartbeat_failing(False)  # writes work again: one TTL more, then unrefreshed entries go
        await eventually(lambda: a.instances("catalog") == [], within_s=5.0)
    finally:
        await a.stop()
        await nc_a.close()
        await nc_b.close()


async def test_most_of_the_view_expiring_at_once_is_held_for_a_ttl(nats_url: str, bucket: str) -> None:
    """A bucket's new leader expires every entry its election kept from being refreshed,
    at once, even where the process's own heartbeat writes again: the view undoes such a
    burst, keeps it for a TTL, in which live instances write themselves back, and lets
    the rest go stale after it. One expiry alone is still a death."""
    nc_a, nc_b = await nats.connect(nats_url), await nats.connect(nats_url)
    a = NatsKvRegistry(nc_a, servers=nats_url, bucket=bucket, ttl_s=1.0, heartbeat_s=0.25)
    await a.start()
    try:
        kv = await nc_b.jetstream().key_value(bucket)
        for name in ("i0", "i1", "i2", "i3"):
            await kv.put(f"catalog.{name}", msgspec.json.encode(instance(name)))
        await eventually(lambda: len(a.instances("catalog")) == 4, within_s=2.0)
        await kv.purge("catalog.i0")  # what a MaxAge expiry looks like to a watcher
        await eventually(lambda: len(a.instances("catalog")) == 3, within_s=2.0)
        await asyncio.sleep(0.5)  # more than a heartbeat: a burst of its own
        for name in ("i1", "i2", "i3"):
            await kv.purge(f"catalog.{name}")
        await heard_so_far(kv, a)
        assert sorted(i.instance_id for i in a.instances("catalog")) == ["i1", "i2", "i3"]
        await kv.put("catalog.i2", msgspec.json.encode(instance("i2")))  # alive: back at its heartbeat
        await eventually(lambda: [i.instance_id for i in a.instances("catalog")] == ["i2"], within_s=5.0)
    finally:
        await a.stop()
        await nc_a.close()
        await nc_b.close()


async def test_a_silent_watch_keeps_the_view_until_it_hears_its_own_heartbeat_again(nats_url: str, bucket: str) -> None:
    """The heartbeat has a connection of its own: it may write again while the watch's
    connection still hangs on a server that was cut off. A view that does not hear its own
    heartbeats must not age everyone else out (the lab's gateway answered 503 for every
    service for 3.5 s so)."""
    nc_a, nc_b = await nats.connect(nats_url), await nats.connect(nats_url)
    a = NatsKvRegistry(nc_a, servers=nats_url, bucket=bucket, ttl_s=1.0, heartbeat_s=0.25)
    b = NatsKvRegistry(nc_b, servers=nats_url, bucket=bucket, ttl_s=1.0, heartbeat_s=0.25)
    await a.start()
    await b.start()
    try:
        await a.register(instance("own"))
        await b.register(instance("other"))
        await eventually(lambda: len(a.instances("catalog")) == 2, within_s=2.0)
        await a._cancel_watch()  # what a watch on a hung connection hears: nothing
        await asyncio.sleep(2.5)  # past the view's staleness (1.5 s)
        assert sorted(i.instance_id for i in a.instances("catalog")) == ["other", "own"]
        a._watch_task = asyncio.create_task(a._watch())  # the connection is back
        await asyncio.sleep(1.8)  # heard again, and a TTL more
        assert "watch" not in a._suspended
        assert sorted(i.instance_id for i in a.instances("catalog")) == ["other", "own"]
        assert b._heartbeat is not None
        await asyncio.to_thread(b._heartbeat.stop)  # now other dies: expiry works again
        await eventually(lambda: [i.instance_id for i in a.instances("catalog")] == ["own"], within_s=5.0)
    finally:
        await a.stop()
        await b.stop()
        await nc_a.close()
        await nc_b.close()
