"""Idempotent consumers against real SQLite/PostgreSQL and a real JetStream."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import nats
import pytest
import sqlalchemy as sa
import structlog
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError

from meshop.mesh.data.store import Conn, Database
from meshop.mesh.events.consumer import DLQ_STREAM, Consumer, inbox, retry_delay_s
from meshop.mesh.events.consumer import metadata as inbox_metadata
from meshop.mesh.events.envelope import Event, EventType, UnreadableEvent, event_id
from meshop.mesh.events.outbox import OutboxRelay, emit, event_stream
from meshop.mesh.events.outbox import metadata as outbox_metadata
from meshop.mesh.testing import eventually

pytestmark = pytest.mark.integration

model = sa.MetaData()
totals = sa.Table("totals", model, sa.Column("name", sa.String(20), primary_key=True), sa.Column("sum", sa.Integer))


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    database = Database(db_url, name="consumer")
    await database.ensure_exists()
    async with database.begin() as conn:
        for meta in (inbox_metadata, outbox_metadata, model):
            await conn.run_sync(meta.create_all)
        await conn.execute(totals.insert().values(name="total", sum=0))
    yield database
    await database.close()


class Added(msgspec.Struct, kw_only=True, frozen=True):
    n: int
    poison: bool = False


def added(source: str) -> EventType[Added]:
    return EventType(source=source, name="Added", data=Added)


async def add(conn: Conn, event: Event[Added]) -> None:
    if event.data.poison:
        raise ValueError("this event can never be applied")
    await conn.execute(totals.update().values(sum=totals.c.sum + event.data.n))


async def reset(conn: Conn) -> None:
    await conn.execute(totals.update().values(sum=0))


async def total(db: Database) -> int:
    async with db.read() as conn:
        return int(await conn.scalar(sa.select(totals.c.sum)))


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[nats.aio.client.Client]:
    client = await nats.connect(nats_url)
    yield client
    await client.close()


async def publish(db: Database, nc: nats.aio.client.Client, source: str, values: list[dict[str, Any]]) -> None:
    relay = OutboxRelay(db, nc, service=source)
    await relay.ensure_stream()
    async with db.begin() as conn:
        for data in values:
            await emit(conn, added(source), Added(**data))
    await relay.publish_pending()


def consumer_for(db: Database, nc: nats.aio.client.Client, source: str, **kwargs: object) -> Consumer:
    return Consumer(
        db,
        nc,
        name=f"test.{source}",
        events=[added(source)],
        handler=add,
        reset=reset,
        **kwargs,  # type: ignore[arg-type]
    )


async def test_each_event_is_applied_once_even_when_delivered_twice(db: Database, nc: nats.aio.client.Client) -> None:
    source = f"c{uuid.uuid4().hex[:8]}"
    await publish(db, nc, source, [{"n": 1}, {"n": 2}, {"n": 4}])
    consumer = consumer_for(db, nc, source, ack_wait_s=1.0)
    await consumer.ensure()
    subscription = await nc.jetstream().pull_subscribe_bind(consumer._durable, stream=consumer.stream)
    first = await subscription.fetch(3, timeout=5)
    # Applied, but the ack is lost (a crash right after the commit): JetStream redelivers.
    for msg in first:
        assert await consumer.apply(consumer.read(msg.data))
    redelivered = await subscription.fetch(3, timeout=5)
    assert [m.metadata.num_delivered for m in redelivered] == [2, 2, 2]
    for msg in redelivered:
        await consumer.handle(msg)
    assert await total(db) == 7
    assert (consumer.applied, consumer.duplicates) == (3, 3)

    async def all_acknowledged() -> bool:  # acks are asynchronous: the server counts them soon after
        stats = await consumer.stats()
        return (stats.pending, stats.unacknowledged) == (0, 0)

    await eventually(all_acknowledged, within_s=15)
    async with db.read() as conn:
        assert await conn.scalar(sa.select(sa.func.count()).select_from(inbox)) == 3
    await nc.jetstream().delete_stream(consumer.stream)


async def test_two_replicas_applying_one_event_at_once_apply_it_once(
    db: Database, db_url: str, nc: nats.aio.client.Client
) -> None:
    """The second replica's inbox insert waits for the first's transaction, then does nothing."""
    entered = asyncio.Event()

    async def slow_add(conn: Conn, event: Event[Added]) -> None:
        entered.set()
        await asyncio.sleep(0.2)  # the other replica arrives while this transaction is open
        await add(conn, event)

    other = Database(db_url, name="consumer")
    try:
        replicas = [
            Consumer(database, nc, name="test.race", events=[added("race")], handler=slow_add)
            for database in (db, other)
        ]
        event = Event(id=event_id(), type="Added", schema_version=1, occurred_at=0.0, data=Added(n=5))
        first = asyncio.create_task(replicas[0].apply(event))
        await entered.wait()
        assert [await replicas[1].apply(event), await first] == [False, True]
    finally:
        await other.close()
    assert await total(db) == 5
    assert [(r.applied, r.duplicates) for r in replicas] == [(1, 0), (0, 1)]


async def test_a_poison_event_goes_to_the_dead_letter_stream_and_the_rest_flow(
    db: Database, nc: nats.aio.client.Client
) -> None:
    source = f"c{uuid.uuid4().hex[:8]}"
    await publish(db, nc, source, [{"n": 1}, {"n": 0, "poison": True}, {"n": 2}])
    consumer = consumer_for(db, nc, source, max_deliver=2)
    task = asyncio.create_task(consumer.run_forever())
    try:
        await eventually(lambda: _dead_lettered(consumer), within_s=15)
        await eventually(lambda: _total_is(db, 3), within_s=15)
    finally:
        task.cancel()
    js = nc.jetstream()
    dead = await js.get_last_msg(DLQ_STREAM, f"meshop.dlq.test.{source}")
    assert dead.headers is not None
    assert dead.headers["meshop-original-subject"] == f"meshop.events.{source}.Added"
    assert dead.headers["meshop-deliveries"] == "2"
    assert "can never be applied" in dead.headers["meshop-error"]
    assert msgspec.json.decode(dead.data, type=Event).data["poison"] is True
    stats = await consumer.stats()
    assert (stats.applied, stats.dead_lettered, stats.failures, stats.pending) == (2, 1, 2, 0)
    await js.delete_stream(consumer.stream)


async def test_an_undecodable_message_is_dead_lettered_at_once(db: Database, nc: nats.aio.client.Client) -> None:
    source = f"c{uuid.uuid4().hex[:8]}"
    await publish(db, nc, source, [{"n": 5}])
    await nc.jetstream().publish(f"meshop.events.{source}.Added", b"not json")
    consumer = consumer_for(db, nc, source)
    task = asyncio.create_task(consumer.run_forever())
    try:
        await eventually(lambda: _dead_lettered(consumer), within_s=15)
        await eventually(lambda: _total_is(db, 5), within_s=15)
    finally:
        task.cancel()
    assert consumer.failures == 0  # never handed to the handler
    await nc.jetstream().delete_stream(consumer.stream)


async def test_replay_rebuilds_a_corrupted_read_model(db: Database, nc: nats.aio.client.Client) -> None:
    source = f"c{uuid.uuid4().hex[:8]}"
    await publish(db, nc, source, [{"n": n} for n in range(1, 11)])
    consumer = consumer_for(db, nc, source)
    task = asyncio.create_task(consumer.run_forever())
    try:
        await eventually(lambda: _total_is(db, 55), within_s=15)
        async with db.begin() as conn:  # the read model drifts (a bug, a bad manual fix...)
            await conn.execute(totals.update().values(sum=999))
        result = await consumer.replay()
        assert (result.replayed, result.applied, result.failed) == (10, 10, 0)
        assert await total(db) == 55
        # Consumption goes on after the replay, still once per event.
        await publish(db, nc, source, [{"n": 100}])
        await eventually(lambda: _total_is(db, 155), within_s=15)
    finally:
        task.cancel()
    async with db.read() as conn:
        assert await conn.scalar(sa.select(sa.func.count()).select_from(inbox)) == 11
    await nc.jetstream().delete_stream(consumer.stream)


async def test_an_event_right_after_another_is_applied_at_once(db: Database, nc: nats.aio.client.Client) -> None:
    """Not when the fetch that brings it waits to fill its batch: up to its timeout, a second."""
    source = f"c{uuid.uuid4().hex[:8]}"
    await publish(db, nc, source, [{"n": 1}])
    consumer = consumer_for(db, nc, source)
    task = asyncio.create_task(consumer.run_forever())
    loop = asyncio.get_running_loop()
    slowest = 0.0
    try:
        await eventually(lambda: _total_is(db, 1), within_s=15)
        for n in range(6):
            await asyncio.sleep(1.35)  # idle: the consumer's fetches time out meanwhile
            await publish(db, nc, source, [{"n": 1}])
            await eventually(lambda n=n: _total_is(db, 2 + 2 * n), poll_s=0.005, within_s=15)  # type: ignore[misc]
            await eventually(lambda: _fetching(nc, consumer), poll_s=0.005, within_s=5)  # and fetching again
            await publish(db, nc, source, [{"n": 1}])
            published = loop.time()
            await eventually(lambda n=n: _total_is(db, 3 + 2 * n), poll_s=0.005, within_s=15)  # type: ignore[misc]
            slowest = max(slowest, loop.time() - published)
    finally:
        task.cancel()
    await nc.jetstream().delete_stream(consumer.stream)
    assert slowest < 0.25


async def test_a_backlog_is_fetched_in_one_pull_after_its_first_event(
    db: Database, nc: nats.aio.client.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first event of a backlog says how many wait behind it: those come in one fetch, not one each."""
    source = f"c{uuid.uuid4().hex[:8]}"
    consumer = consumer_for(db, nc, source)
    fetched: list[int] = []
    fetch = JetStreamContext.PullSubscription.fetch

    async def counted(self: Any, batch: int = 1, *args: Any, **kwargs: Any) -> Any:
        messages = await fetch(self, batch, *args, **kwargs)
        fetched.append(len(messages))
        return messages

    monkeypatch.setattr(JetStreamContext.PullSubscription, "fetch", counted)
    await publish(db, nc, source, [{"n": 1}] * 30)  # waiting in the stream when the consumer starts
    task = asyncio.create_task(consumer.run_forever())
    try:
        await eventually(lambda: _total_is(db, 30), within_s=5)
    finally:
        task.cancel()
    await nc.jetstream().delete_stream(consumer.stream)
    assert fetched[:2] == [1, 29]  # the first, then every one it said was behind it, in one pull


def test_redelivery_backoff_doubles_up_to_a_cap() -> None:
    assert [retry_delay_s(n) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 4.0]
    assert retry_delay_s(50) == 15.0


async def _dead_lettered(consumer: Consumer) -> bool:
    return consumer.dead_lettered == 1


async def _total_is(db: Database, value: int) -> bool:
    return await total(db) == value


async def _fetching(nc: nats.aio.client.Client, consumer: Consumer) -> bool:
    """Whether the consumer's pull request waits on the server: it is in a fetch."""
    info = await nc.jetstream().consumer_info(consumer.stream, consumer._durable)
    return bool(info.num_waiting)


async def test_a_consumer_cancelled_mid_fetch_leaves_nothing_to_block_the_connection_drain(
    db: Database, nats_url: str
) -> None:
    # A fetch cut short is still answered (its batch, or a 408 when its pull expires); a
    # subscription left behind queues the answer unread, and a drain waits for it.
    reported: list[Exception] = []

    async def error_cb(exc: Exception) -> None:
        reported.append(exc)

    nc = await nats.connect(nats_url, drain_timeout=2, error_cb=error_cb)
    source = f"c{uuid.uuid4().hex[:8]}"
    await publish(db, nc, source, [{"n": 1}])
    consumer = consumer_for(db, nc, source)
    running = asyncio.create_task(consumer.run_forever())
    await eventually(lambda: _total_is(db, 1), within_s=15)
    await eventually(lambda: _fetching(nc, consumer), within_s=5)  # waiting in its next fetch (1 s)
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    await asyncio.sleep(1.2)  # the cancelled fetch's pull expires meanwhile
    started = asyncio.get_running_loop().time()
    await nc.drain()
    assert asyncio.get_running_loop().time() - started < 1.0
    assert reported == []


class IdleSubscription:
    """A pull subscription on an idle stream: every fetch ends in asyncio's (the builtin) TimeoutError.

    nats-py raises that one, not its own, when the time runs out between its two pull requests.
    """

    def __init__(self, fetches: int) -> None:
        self.fetched = 0
        self._fetches = fetches
        self.enough = asyncio.Event()

    async def fetch(self, _batch: int, **_options: Any) -> list[Any]:
        self.fetched += 1
        if self.fetched >= self._fetches:
            self.enough.set()
        await asyncio.sleep(0)
        raise TimeoutError

    async def unsubscribe(self) -> None:
        pass


class IdleJetStream:
    def __init__(self, subscription: IdleSubscription) -> None:
        self.subscription = subscription
        self.subscribed = 0

    def jetstream(self) -> IdleJetStream:
        return self

    async def stream_info(self, _name: str) -> None:
        raise NotFoundError

    async def add_stream(self, _config: Any = None, **_params: Any) -> None:
        pass

    async def add_consumer(self, _stream: str, **_config: Any) -> None:
        pass

    async def pull_subscribe_bind(self, _durable: str, **_options: Any) -> IdleSubscription:
        self.subscribed += 1
        return self.subscription


async def test_an_empty_fetch_is_no_failure_and_fetching_goes_on_at_once(sqlite_url: str) -> None:
    subscription = IdleSubscription(fetches=5)
    js = IdleJetStream(subscription)
    db = Database(sqlite_url, name="idle")
    consumer = Consumer(db, js, name="test.idle", events=[added("idle")], handler=add)  # type: ignore[arg-type]
    started = asyncio.get_running_loop().time()
    with structlog.testing.capture_logs() as logs:
        running = asyncio.create_task(consumer.run_forever())
        try:
            async with asyncio.timeout(15):
                await subscription.enough.wait()
        finally:
            running.cancel()
            with pytest.raises(asyncio.CancelledError):
                await running
            await db.close()
    assert logs == []
    assert js.subscribed == 1  # never torn down and resubscribed
    assert asyncio.get_running_loop().time() - started < 1.0  # never paused (a pause is a whole second)


def envelope(data: object, *, type_: str = "Added", schema_version: int = 1) -> bytes:
    """An event as the outbox writes it (and wrote it before events were typed)."""
    return msgspec.json.encode(
        Event(id=event_id(), type=type_, schema_version=schema_version, occurred_at=1.5, data=data)
    )


def test_a_consumer_hands_its_handler_the_data_as_the_event_types_struct(sqlite_url: str) -> None:
    nc = IdleJetStream(IdleSubscription(fetches=1))  # reading needs no server
    consumer = Consumer(Database(sqlite_url, name="read"), nc, name="t.read", events=[added("s")], handler=add)  # type: ignore[arg-type]
    event = consumer.read(envelope({"n": 3, "unknown": "ignored"}))  # a newer producer's extra field
    assert event.data == Added(n=3)
    assert (event.type, event.schema_version, event.occurred_at) == ("Added", 1, 1.5)
    with pytest.raises(UnreadableEvent, match=r"does not decode: Expected `int`, got `str` - at `\$.n`"):
        consumer.read(envelope({"n": "three"}))
    with pytest.raises(UnreadableEvent, match="Added schema version 2; this consumer reads version 1"):
        consumer.read(envelope({"n": 3}, schema_version=2))
    with pytest.raises(UnreadableEvent, match="is a Removed, which this consumer does not read"):
        consumer.read(envelope({"n": 3}, type_="Removed"))
    with pytest.raises(UnreadableEvent, match="undecodable event"):
        consumer.read(b"not json")


def test_a_consumer_reads_the_events_of_one_source() -> None:
    """One durable JetStream consumer reads one stream, and each source has its own."""
    with pytest.raises(ValueError, match=r"one source, not \['a', 'b'\]"):
        Consumer(None, None, name="t.two", events=[added("a"), added("b")], handler=add)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        (envelope({"n": "three"}), "Added data does not decode"),
        (envelope({"n": 3}, schema_version=2), "schema version 2; this consumer reads version 1"),
    ],
    ids=["data-that-does-not-decode", "another-schema-version"],
)
async def test_an_event_it_cannot_read_is_dead_lettered_at_once_and_the_rest_flow(
    db: Database, nc: nats.aio.client.Client, payload: bytes, error: str
) -> None:
    source = f"c{uuid.uuid4().hex[:8]}"
    await publish(db, nc, source, [{"n": 1}])
    js = nc.jetstream()
    await js.publish(f"meshop.events.{source}.Added", payload)
    await publish(db, nc, source, [{"n": 2}])
    consumer = consumer_for(db, nc, source)
    task = asyncio.create_task(consumer.run_forever())
    try:
        await eventually(lambda: _dead_lettered(consumer), within_s=15)
        await eventually(lambda: _total_is(db, 3), within_s=15)
    finally:
        task.cancel()
    dead = await js.get_last_msg(DLQ_STREAM, f"meshop.dlq.test.{source}")
    assert dead.headers is not None
    assert dead.headers["meshop-deliveries"] == "1"
    assert error in dead.headers["meshop-error"]
    assert dead.data == payload  # kept as it came, for whoever fixes it
    assert consumer.failures == 0  # never handed to the handler
    await js.delete_stream(consumer.stream)


class Forwarder:
    """A TCP forwarder to PostgreSQL that can go away as a killed server does: its connections
    dropped, new ones refused, until it is back on the same port."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def up(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def down(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        self._writers |= {writer, upstream_writer}

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            except OSError:
                pass
            finally:
                sink.transport.abort()
                self._writers.discard(sink)

        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))


async def test_events_wait_out_a_database_outage_longer_than_their_redeliveries(
    pg_url: str, nc: nats.aio.client.Client
) -> None:
    """PostgreSQL away for 3 s, six times the redeliveries' budget (max_deliver 2: one 0.5 s
    backoff): the events are held, not dead-lettered, and applied once it is back."""
    url = sa.make_url(pg_url)
    forwarder = Forwarder(url.host or "127.0.0.1", url.port or 5432)
    await forwarder.up()
    db = Database(url.set(host="127.0.0.1", port=forwarder.port).render_as_string(hide_password=False), name="away")
    source = f"c{uuid.uuid4().hex[:8]}"
    try:
        await db.ensure_exists()
        async with db.begin() as conn:
            for meta in (inbox_metadata, outbox_metadata, model):
                await conn.run_sync(meta.create_all)
            await conn.execute(totals.insert().values(name="total", sum=0))
        await publish(db, nc, source, [{"n": 1}, {"n": 2}, {"n": 4}])
        consumer = consumer_for(db, nc, source, max_deliver=2)
        await consumer.ensure()
        await forwarder.down()  # the pooled connections dropped, new ones refused
        task = asyncio.create_task(consumer.run_forever())
        try:
            await asyncio.sleep(3.0)
            await forwarder.up()
            await eventually(lambda: _total_is(db, 7), within_s=15)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        assert (consumer.dead_lettered, consumer.failures, consumer.held) == (0, 0, 1)
        info = await nc.jetstream().consumer_info(consumer.stream, consumer._durable)
        assert info.num_redelivered == 0  # holding spent no delivery
    finally:
        await db.close()
        await forwarder.down()
        with contextlib.suppress(NotFoundError):
            await nc.jetstream().delete_stream(event_stream(source))
