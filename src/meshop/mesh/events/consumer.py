"""Idempotent event consumers: a durable JetStream consumer, an inbox, a dead-letter stream.

JetStream delivers at least once: it redelivers a message whose ack was lost and accepts
a late ack. So dedupe is the consumer's job. Each event is applied in one database
transaction that also writes the row (consumer, event id) to the inbox table; an event
whose row exists is acknowledged without being applied again.

A database that cannot be reached (refused, dropped, recovering: `data.availability`) is no
fault of the event: the consumer holds the message, telling JetStream it is still in
progress, and applies it again once the database answers. No delivery is spent on it,
however long the outage: PostgreSQL killed with kill -9 in the lab was away 14 s (held 4 s,
recovering 10 s), and the redeliveries' backoff (0.5 + 1 + 2 + 4 s) had dead-lettered 130
good events.

A handler that raises otherwise gets the message redelivered (nak with backoff). After
`max_deliver` deliveries the message is republished to the dead-letter stream
`MESHOP_DLQ` (subject `meshop.dlq.<consumer>`, with the original subject, sequence,
delivery count and error in headers) and then terminated: JetStream has no dead-letter
queue of its own. A message it cannot read goes there at once: an envelope that does not
decode, a schema version other than its EventType's, data that does not decode into the
EventType's Struct (envelope.Reader). Retrying would not change them.

A consumer reads the EventTypes it is given, all of one source: a JetStream consumer
reads one stream, and each source has its own. Handlers get the envelope with `data`
decoded into the event's Struct, so they `match event.data: case OrderPlaced(): ...`.

`replay()` rebuilds a read model: it resets the projection and this consumer's inbox in
one transaction, then re-applies the stream from its first message. Events the durable
consumer delivers meanwhile are deduped by the same inbox, so each is applied once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import sqlalchemy as sa
import structlog
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from nats.js.api import StreamConfig
from nats.js.errors import NotFoundError

from meshop.mesh.data.availability import unavailable
from meshop.mesh.data.store import Conn, Database
from meshop.mesh.events.admin import ConsumerStats, ReplayResult
from meshop.mesh.events.envelope import Event, EventType, Reader, UnreadableEvent
from meshop.mesh.events.outbox import ensure_event_stream, event_stream
from meshop.mesh.jetstream import ensure_stream
from meshop.mesh.telemetry import tracecontext, tracing
from meshop.mesh.telemetry.tracing import SpanKind

log = structlog.get_logger("meshop.consumer")

DLQ_STREAM = "MESHOP_DLQ"
#: How long a fetch of the events known to be pending waits for all of them (another replica
#: of the consumer may have taken some meanwhile).
BACKLOG_WAIT_S = 0.05
DLQ_SUBJECTS = "meshop.dlq.>"
#: How often an event held while the database cannot be reached is tried again.
HOLD_RETRY_S = 0.5

metadata = sa.MetaData()


def _columns() -> list[sa.Column[Any]]:
    return [
        sa.Column("consumer", sa.String(100), primary_key=True),
        sa.Column("event_id", sa.String(40), primary_key=True),
        sa.Column("applied_at", sa.Float, nullable=False),
    ]


inbox = sa.Table("inbox", metadata, *_columns())
#: Records an event as applied unless it was (the same SQL on SQLite and PostgreSQL).
_RECORD = sa.text(
    "INSERT INTO inbox (consumer, event_id, applied_at) VALUES (:consumer, :event_id, :applied_at)"
    " ON CONFLICT DO NOTHING"
)


def create_inbox_table(op: Any) -> None:
    """For a service's Alembic migration."""
    op.create_table("inbox", *_columns())


Handler = Callable[[Conn, Event[Any]], Awaitable[None]]
Reset = Callable[[Conn], Awaitable[None]]


def retry_delay_s(deliveries: int, *, base_s: float = 0.5, cap_s: float = 15.0) -> float:
    """Redelivery backoff after `deliveries` failed attempts: 0.5, 1, 2, 4 … s, capped."""
    return float(min(cap_s, base_s * 2.0 ** max(0, deliveries - 1)))


class Consumer:
    """Applies one service's events to this service's database, each exactly once."""

    def __init__(
        self,
        db: Database,
        nc: NatsClient,
        *,
        name: str,
        events: list[EventType[Any]],
        handler: Handler,
        reset: Reset | None = None,
        max_deliver: int = 5,
        ack_wait_s: float = 30.0,
        batch: int = 100,
        replicas: int = 1,
    ) -> None:
        """`events`: what it reads, all of one source; `replicas`: of the streams it creates
        (MESHOP_NATS_REPLICAS; see mesh.jetstream)."""
        if max_deliver < 1:
            raise ValueError("max_deliver must be at least 1")
        sources = sorted({kind.source for kind in events})
        if len(sources) != 1:
            raise ValueError(f"consumer {name} must read the events of one source, not {sources or 'none'}")
        self.name = name
        self.source = sources[0]
        self.stream = event_stream(self.source)
        self.subjects = [kind.subject for kind in events]
        self._reader = Reader(events)
        self._db = db
        self._nc = nc
        self._js = nc.jetstream()
        self._handler = handler
        self._reset = reset
        self.max_deliver = max_deliver
        self._ack_wait_s = ack_wait_s
        #: Messages per fetch when replaying, and at most when the stream has a backlog.
        self._batch = batch
        self._replicas = replicas
        self._durable = name.replace(".", "-")
        #: Held while replaying, so this process applies nothing from the durable meanwhile.
        self._replaying = asyncio.Lock()
        self.applied = self.duplicates = self.failures = self.dead_lettered = 0
        #: Events held while the database could not be reached (each counted once).
        self.held = 0

    async def ensure(self) -> None:
        """Create the source stream (if its producer has not yet), the DLQ and the durable."""
        await ensure_event_stream(self._js, self.source, replicas=self._replicas, owner=False)
        dead_letters = StreamConfig(name=DLQ_STREAM, subjects=[DLQ_SUBJECTS], num_replicas=self._replicas)
        await ensure_stream(self._js, dead_letters, owner=True)  # shared by every consumer
        await self._js.add_consumer(
            self.stream,
            config=api.ConsumerConfig(
                durable_name=self._durable,
                ack_policy=api.AckPolicy.EXPLICIT,
                deliver_policy=api.DeliverPolicy.ALL,
                filter_subjects=self.subjects,
                # One more than ours: we dead-letter on the last, JetStream must not drop it first.
                max_deliver=self.max_deliver + 1,
                ack_wait=self._ack_wait_s,
            ),
        )

    async def run_forever(self) -> None:
        """Fetch and apply until cancelled; survives NATS and database outages."""
        subscription = None
        backlog = 0
        try:
            while True:
                try:
                    if subscription is None:
                        await self.ensure()
                        subscription = await self._js.pull_subscribe_bind(self._durable, stream=self.stream)
                    try:
                        # Waiting for the next event: one at a time. Once a message has come,
                        # nats-py's fetch(n > 1) goes on waiting for the rest of its batch until
                        # its pull request expires, so the second event of a burst was applied
                        # 0.2-0.8 s late (measured). The events the last one said were pending
                        # behind it are there: they are fetched in one pull, which waits at
                        # most BACKLOG_WAIT_S for any that another replica took meanwhile (decision 0038).
                        if backlog:
                            messages = await subscription.fetch(min(backlog, self._batch), timeout=BACKLOG_WAIT_S)
                        else:
                            messages = await subscription.fetch(1, timeout=1.0)
                    except TimeoutError:
                        # An empty batch, normal when idle. nats-py raises its own TimeoutError,
                        # or the builtin one when the time runs out between its two pull requests
                        # (`_fetch_n`); the builtin is the base of both.
                        backlog = 0
                        continue
                    async with self._replaying:
                        for n, msg in enumerate(messages):
                            await self.handle(msg, behind=messages[n + 1 :])
                    backlog = _pending_after(messages[-1]) if messages else 0
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # NATS restarting, consumer deleted…: start over shortly
                    log.warning("consumer failed; will resubscribe", consumer=self.name, error=repr(exc))
                    await _unsubscribe(subscription)
                    subscription = None
                    await asyncio.sleep(1.0)
        finally:  # cancelled mid-fetch, its batch may still come: nobody would read it, and a drain would wait
            await _unsubscribe(subscription)

    async def handle(self, msg: Msg, *, behind: Sequence[Msg] = ()) -> None:
        """Apply one delivered message; ack, nak for a redelivery, or dead-letter it.

        While the database cannot be reached, hold it and the messages fetched `behind` it
        (in progress for JetStream: not redelivered, no delivery spent) and try again.
        """
        deliveries = msg.metadata.num_delivered
        try:
            event = self.read(msg.data)
        except UnreadableEvent as exc:
            await self._dead_letter(msg, str(exc))
            return
        failure = await self._apply_holding(msg, event, behind)
        if failure is None:
            await msg.ack()
            return
        self.failures += 1
        if deliveries >= self.max_deliver:
            await self._dead_letter(msg, repr(failure))
            return
        log.warning(
            "event handler failed; redelivering",
            consumer=self.name,
            event_id=event.id,
            deliveries=deliveries,
            error=repr(failure),
        )
        await msg.nak(delay=retry_delay_s(deliveries))

    async def _apply_holding(self, msg: Msg, event: Event[Any], behind: Sequence[Msg]) -> Exception | None:
        """Apply `event`, as often as the database cannot be reached; the event's own failure, if any."""
        parent = (msg.headers or {}).get(tracecontext.HEADER) or event.traceparent  # the publish span's, when sent
        attributes = {"messaging.system": "nats", "messaging.consumer.group.name": self.name, "event.id": event.id}
        held_since: float | None = None
        while True:
            try:
                with tracing.span(
                    f"consume {event.type}", SpanKind.CONSUMER, parent=parent, attributes=attributes, root=False
                ):
                    await self.apply(event, traceparent=tracecontext.current())
            except Exception as exc:
                if not unavailable(exc):
                    return exc
                if held_since is None:
                    held_since = time.monotonic()
                    self.held += 1
                    log.warning("database unavailable; holding the event", consumer=self.name, error=repr(exc))
                for waiting in (msg, *behind):
                    await waiting.in_progress()  # JetStream waits another ack_wait for each
                await asyncio.sleep(HOLD_RETRY_S)
                continue
            if held_since is not None:
                log.info("database back; event applied", consumer=self.name, held_s=time.monotonic() - held_since)
            return None

    def read(self, payload: bytes) -> Event[Any]:
        """The event in `payload`, its data decoded into its EventType's Struct (or `UnreadableEvent`)."""
        return self._reader.read(payload)

    async def apply(self, event: Event[Any], *, traceparent: str | None = None) -> bool:
        """Apply `event` once (under `traceparent`, else the event's): False when this consumer already had."""
        with tracecontext.use_traceparent(traceparent or event.traceparent):
            async with self._db.begin() as conn:
                # One statement both checks and records: on PostgreSQL, a replica applying the
                # same event concurrently makes it wait for that transaction, then do nothing.
                recorded = await conn.execute(
                    _RECORD, {"consumer": self.name, "event_id": event.id, "applied_at": time.time()}
                )
                if recorded.rowcount != 1:
                    self.duplicates += 1
                    return False
                await self._handler(conn, event)
        self.applied += 1
        return True

    async def _dead_letter(self, msg: Msg, error: str) -> None:
        headers = {
            "meshop-consumer": self.name,
            "meshop-original-subject": msg.subject,
            "meshop-stream-sequence": str(msg.metadata.sequence.stream),
            "meshop-deliveries": str(msg.metadata.num_delivered),
            "meshop-error": error[:500],
        }
        await self._js.publish(f"meshop.dlq.{self.name}", msg.data, headers=headers, stream=DLQ_STREAM)
        await msg.term()
        self.dead_lettered += 1
        log.error("event dead-lettered", consumer=self.name, subject=msg.subject, error=error[:200])

    async def stats(self) -> ConsumerStats:
        pending = unacknowledged = 0
        with contextlib.suppress(NotFoundError):
            info = await self._js.consumer_info(self.stream, self._durable)
            pending, unacknowledged = info.num_pending or 0, info.num_ack_pending or 0
        return ConsumerStats(
            name=self.name,
            stream=self.stream,
            applied=self.applied,
            duplicates=self.duplicates,
            failures=self.failures,
            dead_lettered=self.dead_lettered,
            pending=pending,
            unacknowledged=unacknowledged,
        )

    async def replay(self) -> ReplayResult:
        """Reset the read model and this consumer's inbox, then re-apply the whole stream."""
        if self._reset is None:
            raise ValueError(f"consumer {self.name} has no read model to rebuild")
        started = time.monotonic()
        replayed = applied = failed = 0
        async with self._replaying:
            await self.ensure()
            async with self._db.begin() as conn:
                await self._reset(conn)
                await conn.execute(inbox.delete().where(inbox.c.consumer == self.name))
            last = (await self._js.stream_info(self.stream)).state.last_seq
            reader = await self._js.pull_subscribe(
                self.subjects[0],
                stream=self.stream,
                config=api.ConsumerConfig(
                    ack_policy=api.AckPolicy.NONE,
                    deliver_policy=api.DeliverPolicy.ALL,
                    filter_subjects=self.subjects,
                    inactive_threshold=30.0,
                ),
            )
            try:
                seq = 0
                while seq < last:
                    try:
                        messages = await reader.fetch(self._batch, timeout=2.0)
                    except TimeoutError:  # nothing more that matches our subjects (either kind: see run_forever)
                        break
                    for msg in messages:
                        seq = msg.metadata.sequence.stream
                        replayed += 1
                        try:
                            applied += await self.apply(self.read(msg.data))
                        except Exception as exc:
                            failed += 1
                            log.warning("event failed in replay", consumer=self.name, seq=seq, error=repr(exc))
            finally:
                with contextlib.suppress(Exception):
                    await reader.unsubscribe()
        seconds = round(time.monotonic() - started, 3)
        log.info("read model rebuilt", consumer=self.name, replayed=replayed, applied=applied, failed=failed)
        return ReplayResult(name=self.name, replayed=replayed, applied=applied, failed=failed, seconds=seconds)


async def _unsubscribe(subscription: JetStreamContext.PullSubscription | None) -> None:
    if subscription is not None:
        with contextlib.suppress(Exception):  # the connection may be closed or reconnecting
            await subscription.unsubscribe()


def _pending_after(msg: Msg) -> int:
    """How many of the consumer's messages the stream still had behind `msg` when it sent it."""
    try:
        return int(msg.metadata.num_pending)
    except Exception:  # not a JetStream delivery (no metadata in its reply subject)
        return 0
