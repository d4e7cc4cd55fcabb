"""The transactional outbox against real SQLite/PostgreSQL and a real JetStream."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import nats
import pytest
import sqlalchemy as sa
from nats.aio.client import Client as NatsClient
from nats.js.errors import APIError

import meshop.services.orders.app as orders_app
from meshop.mesh.data.store import Database
from meshop.mesh.events.envelope import Event, EventType
from meshop.mesh.events.outbox import OutboxRelay, emit, outbox
from meshop.mesh.telemetry.spanrecord import SpanRecord
from meshop.mesh.telemetry.tracing import SpanKind
from meshop.mesh.testing import eventually

pytestmark = pytest.mark.integration


class ThingHappened(msgspec.Struct, kw_only=True, frozen=True):
    n: int


class Other(msgspec.Struct, kw_only=True, frozen=True):
    pass


def happened(service: str) -> EventType[ThingHappened]:
    return EventType(source=service, name="ThingHappened", data=ThingHappened)


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    database = Database(db_url, name="orders")
    await database.ensure_exists()
    await database.migrate(Path(orders_app.__file__).parent / "migrations")
    yield database
    await database.close()


@pytest.fixture(params=["server", "cluster"])
def jetstream(request: pytest.FixtureRequest, nats_url: str) -> tuple[str, int]:
    """A server and the replicas of its streams: one, or three on a 3-node cluster. On a
    cluster the stream's leader stages what it proposes, which a single server does not
    (decision 0034)."""
    if request.param == "server":
        return nats_url, 1
    return request.getfixturevalue("cluster"), 3


async def stream_events(nc: NatsClient, stream: str) -> list[Event]:
    info = await nc.jetstream().stream_info(stream)
    events = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        msg = await nc.jetstream().get_msg(stream, seq)
        events.append(msgspec.json.decode(msg.data, type=Event))
    return events


@contextlib.asynccontextmanager
async def relay_on(db: Database, url: str, **options: Any) -> AsyncIterator[tuple[NatsClient, OutboxRelay]]:
    """A relay of a service of its own (its own stream, made now, deleted after) and its connection."""
    nc = await nats.connect(url)
    relay = OutboxRelay(db, nc, service=f"t{uuid.uuid4().hex[:8]}", **options)
    try:
        await relay.ensure_stream()
        yield nc, relay
    finally:
        await nc.jetstream().delete_stream(relay.stream)
        await nc.close()


@contextlib.asynccontextmanager
async def running(relay: OutboxRelay) -> AsyncIterator[None]:
    """`relay.run_forever()` in a task of its own, cancelled after."""
    task = asyncio.create_task(relay.run_forever())
    try:
        yield
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_events_committed_with_a_change_are_published_once_each(db: Database, nats_url: str) -> None:
    async with relay_on(db, nats_url) as (nc, relay):
        async with db.begin() as conn:
            for n in range(3):
                await emit(conn, happened(relay.service), ThingHappened(n=n))
        with pytest.raises(RuntimeError):  # noqa: PT012 - the rollback is what is tested
            async with db.begin() as conn:  # rolled back: its event must never appear
                await emit(conn, happened(relay.service), ThingHappened(n=99))
                raise RuntimeError("the change failed")
        assert await relay.publish_pending() == 3
        assert (await relay.stats()).pending == 0
        # A crash between publishing and marking sent: the row goes out again...
        async with db.begin() as conn:
            await conn.execute(outbox.update().where(outbox.c.sent_at.is_not(None)).values(sent_at=None))
        assert await relay.publish_pending() == 3
        # ...and JetStream's duplicate window keeps one copy of each.
        events = await stream_events(nc, relay.stream)
        assert [e.data["n"] for e in events] == [0, 1, 2]
        assert {e.type for e in events} == {"ThingHappened"}


async def test_stats_report_the_backlog_and_its_age(db: Database, nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    try:
        relay = OutboxRelay(db, nc, service="stats")
        empty = await relay.stats()
        assert (empty.pending, empty.oldest_pending_age_s) == (0, 0.0)
        async with db.begin() as conn:
            await emit(conn, EventType(source="stats", name="A", data=Other), Other())
            await conn.execute(outbox.update().values(created_at=sa.func.coalesce(outbox.c.created_at, 0) - 30))
        stats = await relay.stats()
        assert stats.pending == 1
        assert stats.oldest_pending_age_s >= 30
    finally:
        await nc.close()


async def test_an_event_is_published_as_soon_as_its_transaction_commits(db: Database, nats_url: str) -> None:
    """Not at the next sweep: an hour away here, so only the commit's wake can publish it."""
    async with relay_on(db, nats_url, sweep_s=3600) as (nc, relay), running(relay):
        service = relay.service
        published = await nc.subscribe(f"meshop.events.{service}.>")
        with pytest.raises(RuntimeError):  # noqa: PT012 - the rollback is what is tested
            async with db.begin() as conn:
                await emit(conn, happened(service), ThingHappened(n=0))
                raise RuntimeError("the change failed")
        async with db.begin() as conn:
            await emit(conn, happened(service), ThingHappened(n=1))
        msg = await published.next_msg(timeout=5)  # by its first sweep or by the wake
        assert msgspec.json.decode(msg.data, type=Event).data == {"n": 1}

        # The relay marks it sent and looks once more for rows committed meanwhile; then it waits an hour.
        async def drained() -> bool:
            return (await relay.stats()).pending == 0

        await eventually(drained, within_s=5)
        async with db.begin() as conn:
            await emit(conn, happened(service), ThingHappened(n=2))
        msg = await published.next_msg(timeout=5)
        assert msgspec.json.decode(msg.data, type=Event).data == {"n": 2}
        await eventually(lambda: relay.published == 2)  # sent is not yet stored: acknowledged is
        assert [e.data["n"] for e in await stream_events(nc, relay.stream)] == [1, 2]  # the rolled back: never


async def test_without_the_wake_an_event_waits_for_the_sweep(db: Database, nats_url: str) -> None:
    """`MESHOP_OUTBOX_WAKE=false`, the benchmark's baseline, really leaves it to the sweep."""
    async with relay_on(db, nats_url, sweep_s=3600, wake_on_commit=False) as (nc, relay), running(relay):
        published = await nc.subscribe(f"meshop.events.{relay.service}.>")
        await eventually(lambda: relay.sweeps == 1, within_s=5)  # its first sweep (of nothing) is over
        async with db.begin() as conn:
            await emit(conn, happened(relay.service), ThingHappened(n=1))
        with pytest.raises(nats.errors.TimeoutError):
            await published.next_msg(timeout=1)
        assert (await relay.stats()).pending == 1


async def test_the_row_written_is_the_envelope_as_before_with_the_struct_as_its_data(db: Database) -> None:
    """The wire format did not change with typed events: consumers of any age read it."""
    traceparent = "00-" + "1" * 32 + "-" + "2" * 16 + "-01"
    async with db.begin() as conn:
        event = await emit(conn, happened("wire"), ThingHappened(n=7), traceparent=traceparent)
        row = (await conn.execute(sa.select(outbox.c.subject, outbox.c.payload).where(outbox.c.id == event.id))).one()
    assert row.subject == "meshop.events.wire.ThingHappened"
    assert msgspec.json.decode(row.payload) == {
        "id": event.id,
        "type": "ThingHappened",
        "schema_version": 1,
        "occurred_at": event.occurred_at,
        "data": {"n": 7},
        "traceparent": traceparent,
    }


async def test_emitting_data_of_another_struct_than_the_event_types_is_refused(db: Database) -> None:
    with pytest.raises(TypeError, match="ThingHappened carries ThingHappened, not Other"):
        async with db.begin() as conn:
            await emit(conn, happened("wire"), Other())  # type: ignore[arg-type]


class Counted:
    """Counts the transactions a database opens, by kind."""

    def __init__(self, db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
        self.reads = self.writes = 0
        begin, read = db.begin, db.read

        def counting_begin() -> Any:
            self.writes += 1
            return begin()

        def counting_read() -> Any:
            self.reads += 1
            return read()

        monkeypatch.setattr(db, "begin", counting_begin)
        monkeypatch.setattr(db, "read", counting_read)


async def test_a_batch_is_read_once_and_marked_sent_in_one_transaction(
    db: Database, nats_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with relay_on(db, nats_url) as (nc, relay):
        async with db.begin() as conn:
            for n in range(5):
                await emit(conn, happened(relay.service), ThingHappened(n=n))
        counted = Counted(db, monkeypatch)
        assert await relay.publish_pending() == 5
        # One read of the unsent rows (fewer than a batch: no second look), one write marking all five.
        assert (counted.reads, counted.writes) == (1, 1)
        assert (await relay.stats()).pending == 0
        assert [e.data["n"] for e in await stream_events(nc, relay.stream)] == [0, 1, 2, 3, 4]


async def test_a_running_relay_marks_what_it_published_in_its_next_sweeps_transaction(
    db: Database, nats_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under load a sweep is one transaction: it marks the last sweep's rows and reads the next."""
    async with relay_on(db, nats_url, sweep_s=3600, linger_s=0, mark_after_s=3600) as (nc, relay):
        published = await nc.subscribe(f"meshop.events.{relay.service}.>")
        async with running(relay):
            await eventually(lambda: relay.sweeps == 1)  # its first look (at nothing) is over
            async with db.begin() as conn:
                await emit(conn, happened(relay.service), ThingHappened(n=0))
            await published.next_msg(timeout=5)
            await eventually(lambda: relay.published == 1)
            assert (await relay.stats()).pending == 1  # published, not marked: no sweep since
            counted = Counted(db, monkeypatch)
            async with db.begin() as conn:  # the test's own write transaction
                await emit(conn, happened(relay.service), ThingHappened(n=1))
            await published.next_msg(timeout=5)
            await eventually(lambda: relay.published == 2)
            assert (counted.reads, counted.writes) == (0, 2)  # the sweep: one write transaction, no read
            assert (await relay.stats()).pending == 1  # the first marked, the second waits for a sweep
        assert (await relay.stats()).pending == 0  # stopping, the relay marked what it had published
        assert [e.data["n"] for e in await stream_events(nc, relay.stream)] == [0, 1]


async def test_a_relay_at_rest_marks_what_it_published_soon_after(db: Database, nats_url: str) -> None:
    async with relay_on(db, nats_url, sweep_s=3600, mark_after_s=0.05) as (_, relay), running(relay):
        async with db.begin() as conn:
            await emit(conn, happened(relay.service), ThingHappened(n=0))

        async def drained() -> bool:
            return relay.published == 1 and (await relay.stats()).pending == 0

        await eventually(drained, within_s=5)


async def test_commits_soon_after_a_sweep_wait_for_the_rest_of_its_linger_and_go_in_one_sweep(
    db: Database, nats_url: str
) -> None:
    async with relay_on(db, nats_url, sweep_s=3600, linger_s=1.0) as (nc, relay), running(relay):
        published = await nc.subscribe(f"meshop.events.{relay.service}.>")
        async with db.begin() as conn:
            await emit(conn, happened(relay.service), ThingHappened(n=0))
        await published.next_msg(timeout=5)  # at once: the relay was at rest
        await eventually(lambda: relay.published == 1)
        sweeps = relay.sweeps
        for n in range(1, 6):  # five commits, each waking the relay, well within the linger
            async with db.begin() as conn:
                await emit(conn, happened(relay.service), ThingHappened(n=n))
        for _ in range(5):
            await published.next_msg(timeout=5)
        await eventually(lambda: relay.published == 6)  # sent is not yet stored: acknowledged is
        assert relay.sweeps == sweeps + 1
        assert [e.data["n"] for e in await stream_events(nc, relay.stream)] == list(range(6))


async def test_a_full_batch_is_followed_by_the_next(db: Database, nats_url: str) -> None:
    async with relay_on(db, nats_url, batch=2) as (nc, relay):
        async with db.begin() as conn:
            for n in range(5):
                await emit(conn, happened(relay.service), ThingHappened(n=n))
        assert await relay.publish_pending() == 5
        assert [e.data["n"] for e in await stream_events(nc, relay.stream)] == [0, 1, 2, 3, 4]


async def test_a_sweep_sends_its_whole_batch_before_awaiting_an_acknowledgement(db: Database, nats_url: str) -> None:
    async with relay_on(db, nats_url) as (nc, relay):
        send = relay._pipeline.send
        answered_before_send: list[int] = []
        futures: list[asyncio.Future[Any]] = []

        async def recorded(subject: str, payload: bytes, headers: dict[str, str]) -> asyncio.Future[Any]:
            answered_before_send.append(sum(f.done() for f in futures))
            futures.append(await send(subject, payload, headers))
            return futures[-1]

        relay._pipeline.send = recorded  # type: ignore[method-assign]
        async with db.begin() as conn:
            for n in range(5):
                await emit(conn, happened(relay.service), ThingHappened(n=n))
        assert await relay.publish_pending() == 5
        assert answered_before_send == [0, 0, 0, 0, 0]  # one write of five, then the five answers
        assert [e.data["n"] for e in await stream_events(nc, relay.stream)] == [0, 1, 2, 3, 4]


async def test_a_failed_publish_leaves_its_row_and_the_later_ones_for_the_next_sweep(
    db: Database, jetstream: tuple[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """JetStream refuses the third of five, which were all sent: the next sweep publishes it
    after the fourth and fifth, which it stored then and stores no second time."""
    url, replicas = jetstream
    async with relay_on(db, url, replicas=replicas) as (nc, relay):
        send = relay._pipeline.send
        calls = 0

        async def third_refused(subject: str, payload: bytes, headers: dict[str, str]) -> asyncio.Future[Any]:
            nonlocal calls
            calls += 1
            if calls == 3:  # a precondition JetStream checks and refuses: an error acknowledgement
                headers = {**headers, "Nats-Expected-Stream": "NOT_" + relay.stream}
            return await send(subject, payload, headers)

        async with db.begin() as conn:
            for n in range(5):
                await emit(conn, happened(relay.service), ThingHappened(n=n))
        monkeypatch.setattr(relay._pipeline, "send", third_refused)
        with pytest.raises(APIError):
            await relay.publish_pending()
        assert [e.data["n"] for e in await stream_events(nc, relay.stream)] == [0, 1, 3, 4]
        async with db.read() as conn:
            unsent = (await conn.execute(sa.select(outbox.c.payload).where(outbox.c.sent_at.is_(None)))).scalars()
            assert sorted(msgspec.json.decode(p)["data"]["n"] for p in unsent) == [2, 3, 4]

        assert await relay.publish_pending() == 3  # the next sweep, the fault gone: the fourth and fifth dedupe
        assert [e.data["n"] for e in await stream_events(nc, relay.stream)] == [0, 1, 3, 4, 2]
        assert (await relay.stats()).pending == 0


async def test_two_relays_on_one_database_put_each_event_in_the_stream_once_in_order(
    db: Database, db_url: str, jetstream: tuple[str, int]
) -> None:
    """Replicas of a service share its database (on PostgreSQL): both relays publish every row; dedup keeps one."""
    service, (url, replicas) = f"t{uuid.uuid4().hex[:8]}", jetstream
    other = Database(db_url, name="orders")  # the second replica's own engine on the same database
    connections = [await nats.connect(url), await nats.connect(url)]
    relays = [
        OutboxRelay(database, nc, service=service, replicas=replicas)
        for database, nc in zip((db, other), connections, strict=True)
    ]
    await relays[0].ensure_stream()
    running = [asyncio.create_task(relay.run_forever()) for relay in relays]
    try:
        for n in range(30):  # alternately through either replica: each commit wakes its own relay
            async with (db, other)[n % 2].begin() as conn:
                await emit(conn, happened(service), ThingHappened(n=n))
            if n % 10 == 9:  # and now and then both, at once, on everything unsent
                await asyncio.gather(*(relay.publish_pending() for relay in relays))

        async def drained() -> bool:
            return (await relays[0].stats()).pending == 0

        await eventually(drained, within_s=10)
        assert [e.data["n"] for e in await stream_events(connections[0], relays[0].stream)] == list(range(30))
        assert sum(relay.published for relay in relays) >= 30  # between them; what both sent was deduped
    finally:
        for task in running:
            task.cancel()
        for task in running:
            with pytest.raises(asyncio.CancelledError):
                await task
        await connections[0].jetstream().delete_stream(relays[0].stream)
        for nc in connections:
            await nc.close()
        await other.close()


async def test_each_event_is_published_in_a_producer_span_whose_child_the_consumer_gets(
    db: Database, nats_url: str, spans: list[SpanRecord]
) -> None:
    parents = ["00-" + f"{n + 1:032x}" + "-" + f"{n + 1:016x}" + "-01" for n in range(3)]
    async with relay_on(db, nats_url) as (nc, relay):
        async with db.begin() as conn:
            for n, parent in enumerate(parents):
                await emit(conn, happened(relay.service), ThingHappened(n=n), traceparent=parent)
        assert await relay.publish_pending() == 3
        producers = [s for s in spans if s.kind == SpanKind.PRODUCER.value]
        assert [(s.name, s.trace_id, s.parent_id) for s in producers] == [
            ("publish ThingHappened", parent[3:35], parent[36:52]) for parent in parents
        ]
        assert all(s.end_ns >= s.start_ns > 0 and not s.error for s in producers)
        info = await nc.jetstream().stream_info(relay.stream)
        for seq, span in zip(range(info.state.first_seq, info.state.last_seq + 1), producers, strict=True):
            msg = await nc.jetstream().get_msg(relay.stream, seq)
            assert msg.headers is not None
            assert msg.headers["traceparent"] == f"00-{span.trace_id}-{span.span_id}-01"
