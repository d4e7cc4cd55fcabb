"""The transactional outbox: events written with the state change, published after.

A service calls `emit(conn, KIND, data)` (`KIND` an `EventType` of its contract, `data`
its Struct) inside the same database transaction as the change the event announces, so
the event exists if and only if the change committed. The relay publishes unsent rows
to a JetStream stream with `Nats-Msg-Id` = the event id and marks them sent after
JetStream acknowledges. A crash between publishing and marking is harmless: the row is
published again on the next sweep, and JetStream drops the duplicate within its
duplicate window (consumers dedupe too, as JetStream may still redeliver).

A sweep reads up to `batch` unsent rows, sends them all in order before awaiting any
acknowledgement (one write for the batch, not a round trip per row), and marks the
acknowledged ones, a prefix of the batch, sent (docs/decisions/0031, 0034, 0044). The
stream holds them in commit order unless a publish fails: that row is published again by
the next sweep, behind the ones after it that JetStream stored meanwhile. Consumers see
no stricter order anyway: a delivery that fails is redelivered after later ones.

The relay publishes as soon as a transaction that emitted commits: `emit` marks its
transaction (`announce_on_commit`), and the database wakes the running relay after the
commit, so no service has to remember to. A sweep every second catches the rest: rows
from another process's commits, and rows a failed publish left behind.

Under load the running relay batches (docs/decisions/0035): a wake within `linger_s` (20 ms,
`MESHOP_OUTBOX_LINGER_S`) of the last sweep's start waits out the rest of it, so the rows of the commits meanwhile go
in one sweep, and the rows a sweep published are marked sent in the next sweep's own
transaction, or after `mark_after_s` without one. At rest, a commit is published at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import msgspec
import sqlalchemy as sa
import structlog
from nats.aio.client import Client as NatsClient
from nats.js.api import StreamConfig
from nats.js.client import JetStreamContext
from nats.js.errors import APIError

from meshop.mesh.data.store import Conn, Database, announce_on_commit
from meshop.mesh.events._pipeline import Pipeline
from meshop.mesh.events.admin import OutboxStats
from meshop.mesh.events.envelope import Event, EventType, S, event_id
from meshop.mesh.jetstream import ensure_stream
from meshop.mesh.telemetry import tracecontext, tracing
from meshop.mesh.telemetry.tracing import SpanKind

log = structlog.get_logger("meshop.outbox")

DUPLICATE_WINDOW_S = 600.0
#: How long a publish waits for its acknowledgement (nats-py's default).
ACK_TIMEOUT_S = 5.0
#: A wake this soon after the last sweep began waits for the rest of it (batching under load).
LINGER_S = 0.02
#: Rows published and acknowledged are marked sent with the next sweep, or after this long.
MARK_AFTER_S = 0.05
#: JetStream's answer while another publish of the same `Nats-Msg-Id` is being stored (a
#: clustered stream's leader has proposed it): another relay's copy of the same row.
_IN_PROCESS = 10158
metadata = sa.MetaData()


def _columns() -> list[sa.Column[Any]]:
    return [
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("subject", sa.String(200), nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("sent_at", sa.Float),
    ]


outbox = sa.Table("outbox", metadata, *_columns())

# Built once: executing a prebuilt statement skips coercing its arguments and generating its
# cache key per call (docs/decisions/0032).
_INSERT = outbox.insert().values(
    id=sa.bindparam("id"),
    subject=sa.bindparam("subject"),
    payload=sa.bindparam("payload"),
    created_at=sa.bindparam("created_at"),
)
_UNSENT = (
    sa.select(outbox.c.id, outbox.c.subject, outbox.c.payload)
    .where(outbox.c.sent_at.is_(None))
    .order_by(outbox.c.created_at, outbox.c.id)
    .limit(sa.bindparam("b_limit"))
)
_MARK = (
    outbox.update().where(outbox.c.id.in_(sa.bindparam("b_ids", expanding=True))).values(sent_at=sa.bindparam("b_at"))
)


def create_outbox_table(op: Any) -> None:
    """For a service's Alembic migration."""
    op.create_table("outbox", *_columns())
    op.create_index("ix_outbox_unsent", "outbox", ["sent_at", "created_at"])


def event_stream(service: str) -> str:
    """The JetStream stream holding `service`'s events (`meshop.events.<service>.<type>`)."""
    return f"MESHOP_EVENTS_{service.upper()}"


async def ensure_event_stream(js: JetStreamContext, service: str, *, replicas: int = 1, owner: bool) -> None:
    """Create `service`'s event stream unless it exists (its producer or a consumer may be first).

    `owner` (the producer) raises an existing stream's replicas to `replicas` (mesh.jetstream).
    """
    config = StreamConfig(
        name=event_stream(service),
        subjects=[f"meshop.events.{service}.>"],
        duplicate_window=DUPLICATE_WINDOW_S,
        num_replicas=replicas,
    )
    await ensure_stream(js, config, owner=owner)


class _Traced(msgspec.Struct):
    traceparent: str | None = None


_trace_of = msgspec.json.Decoder(_Traced).decode  # reads only the event's traceparent


async def emit(conn: Conn, kind: EventType[S], data: S, *, traceparent: str | None = None) -> Event[S]:
    """Write a `kind` event with `data` in the caller's transaction; it is published after that commits."""
    if not isinstance(data, kind.data):  # mypy sees most mix-ups; this catches the rest before the wire does
        raise TypeError(f"{kind.name} carries {kind.data.__name__}, not {type(data).__name__}")
    event = Event(
        id=event_id(),
        type=kind.name,
        schema_version=kind.schema_version,
        occurred_at=time.time(),
        data=data,
        traceparent=traceparent or tracecontext.current(),
    )
    await conn.execute(
        _INSERT,
        {
            "id": event.id,
            "subject": kind.subject,
            "payload": msgspec.json.encode(event).decode(),
            "created_at": event.occurred_at,
        },
    )
    announce_on_commit(conn)  # wakes the relay once this commits
    return event


class OutboxRelay:
    """Publishes a service's unsent outbox rows to its JetStream stream.

    Running, it publishes after every commit that emitted and every `sweep_s`;
    `wake_on_commit=False` leaves it to the sweep (the baseline the benchmark measures).
    `linger_s` and `mark_after_s` batch under load (module docstring); 0 turns either off.
    """

    def __init__(
        self,
        db: Database,
        nc: NatsClient,
        *,
        service: str,
        batch: int = 200,
        sweep_s: float = 1.0,
        wake_on_commit: bool = True,
        replicas: int = 1,
        linger_s: float = LINGER_S,
        mark_after_s: float = MARK_AFTER_S,
    ) -> None:
        """`replicas`: of the event stream (MESHOP_NATS_REPLICAS); this relay owns it."""
        self._db = db
        self._js = nc.jetstream()
        self._pipeline = Pipeline(nc)
        self.service = service
        self.stream = event_stream(service)
        self._batch = batch
        self._sweep_s = sweep_s
        self._wake = asyncio.Event()
        self._wake_on_commit = wake_on_commit
        self._replicas = replicas
        self._linger_s = linger_s
        self._mark_after_s = mark_after_s
        #: Rows JetStream acknowledged that are not yet marked sent in the database.
        self._acknowledged: list[str] = []
        self.published = 0
        self.sweeps = 0

    def notify(self) -> None:
        """Something was emitted and committed: sweep now rather than at the next tick."""
        self._wake.set()

    async def ensure_stream(self) -> None:
        await ensure_event_stream(self._js, self.service, replicas=self._replicas, owner=True)

    async def publish_pending(self) -> int:
        """Publish every unsent row (oldest first) and mark it sent; returns how many were published.

        A batch is published in order, up to the first row JetStream did not acknowledge:
        that row and the rest wait for the next sweep, and this raises its error (after
        marking what was acknowledged).
        """
        try:
            return await self._sweep()
        finally:
            await self.mark_acknowledged()

    async def mark_acknowledged(self) -> None:
        """Mark sent, in one transaction, the rows published since the last mark."""
        if self._acknowledged:
            async with self._db.begin() as conn:
                await self._mark(conn)

    async def _mark(self, conn: Conn) -> None:
        if self._acknowledged:
            await conn.execute(_MARK, {"b_ids": self._acknowledged, "b_at": time.time()})
            self._acknowledged = []

    async def _sweep(self) -> int:
        """Publish every unsent row; the acknowledged are left in `_acknowledged` to mark.

        Rows acknowledged before are marked in the same transaction that reads the next batch.
        """
        total = 0
        while True:
            if self._acknowledged:
                async with self._db.begin() as conn:
                    await self._mark(conn)
                    rows = list(await conn.execute(_UNSENT, {"b_limit": self._batch}))
            else:
                async with self._db.read() as conn:
                    rows = list(await conn.execute(_UNSENT, {"b_limit": self._batch}))
            self.sweeps += 1  # counted once it has looked: a row committed since wakes the next
            if not rows:
                return total
            acknowledged, error = await self._publish(rows)
            self._acknowledged.extend(row.id for row in rows[:acknowledged])
            total += acknowledged
            self.published += acknowledged
            if error is not None:
                raise error
            if acknowledged < len(rows):  # another relay is storing the next: a duplicate next sweep
                return total
            if len(rows) < self._batch:
                # Every unsent row was in it. One committed since has woken the relay (the
                # wake is cleared before a sweep), and another process's waits for the sweep.
                return total

    async def _publish(self, rows: list[sa.Row[Any]]) -> tuple[int, Exception | None]:
        """Publish `rows` pipelined: how many JetStream acknowledged, in a row, and why the next
        was not (None: another relay's copy of it is being stored).

        Every row is sent before any acknowledgement is awaited (decision 0044): one write and
        one read for the batch on both sides instead of a round trip per row. They reach the
        stream in the order sent; a row whose publish fails is published again by the next
        sweep, after the rows behind it that JetStream stored meanwhile (their own publishes
        again are duplicates, and only mark them). No expected-last header (decision 0034).
        """
        sent: list[tuple[asyncio.Future[Any], tracing.SpanRecord | None]] = []
        error: Exception | None = None
        try:
            for row in rows:
                payload = row.payload.encode()
                parent = _trace_of(payload).traceparent
                record, traceparent = tracing.open_span(
                    "publish " + row.subject.rpartition(".")[2],
                    SpanKind.PRODUCER,
                    parent=parent if parent is None or tracecontext.valid(parent) else None,
                    attributes={"messaging.system": "nats", "messaging.destination.name": row.subject},
                    root=False,
                )
                # The consumer's span is this one's child.
                headers = {"Nats-Msg-Id": row.id, tracecontext.HEADER: traceparent}
                try:
                    future = await self._pipeline.send(row.subject, payload, headers)
                except Exception:
                    if record is not None:
                        tracing.fail(record, "not sent")
                        tracing.end_span(record)
                    raise
                sent.append((future, record))
        except Exception as exc:  # the connection closed: what was sent may still be acknowledged
            error = exc
        acknowledged = 0
        try:
            async with asyncio.timeout(ACK_TIMEOUT_S):
                for future, record in sent:
                    await future
                    acknowledged += 1
                    if record is not None:
                        tracing.end_span(record)
        except APIError as exc:
            error = None if exc.err_code == _IN_PROCESS else exc
        except Exception as exc:  # unanswered in time, or NATS is down: this row and the rest wait
            error = exc
        finally:
            for future, record in sent[acknowledged:]:
                future.cancel()  # stops waiting; JetStream may still store it, and dedupes it next time
                if future.done() and not future.cancelled():
                    future.exception()  # retrieved: the first error is the one reported
                if record is not None:
                    tracing.fail(record, repr(error)[:200] if error is not None else "not acknowledged")
                    tracing.end_span(record)
        return acknowledged, error

    async def run_forever(self) -> None:
        """Publish until cancelled: after every commit that emitted, and every `sweep_s`."""
        await self.ensure_stream()
        if self._wake_on_commit:
            self._db.add_commit_listener(self.notify)
        try:
            while True:
                # Cleared before the sweep: a commit while it runs wakes the next one at once.
                self._wake.clear()
                last = time.monotonic()
                try:
                    await self._sweep()
                except Exception as exc:  # NATS or the database is down: the rows wait
                    log.warning("outbox relay failed; will retry", service=self.service, error=repr(exc))
                if self._acknowledged and not await self._woken(self._mark_after_s):
                    await self._mark_quietly()  # no sweep came to mark them with
                if await self._woken(self._sweep_s) and (rest := last + self._linger_s - time.monotonic()) > 0:
                    await asyncio.sleep(rest)  # under load: the commits of the rest of it join this sweep
        finally:
            if self._wake_on_commit:
                self._db.remove_commit_listener(self.notify)
            await asyncio.shield(self._mark_quietly())  # stopping: what was published is not sent again
            with contextlib.suppress(Exception):  # the connection may be closed already
                await self._pipeline.close()

    async def _woken(self, timeout_s: float) -> bool:
        """Whether a commit woke the relay within `timeout_s`."""
        # Not wait_for: on 3.11 it waits in a task of its own, one more turn of the loop
        # (behind everything else ready) between a commit's wake and the sweep.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._wake.wait()
        return self._wake.is_set()

    async def _mark_quietly(self) -> None:
        try:
            await self.mark_acknowledged()
        except Exception as exc:  # the database is away: the next sweep marks them, or publishes them again
            log.warning("outbox relay could not mark rows sent", service=self.service, error=repr(exc))

    async def stats(self) -> OutboxStats:
        """Unsent rows and the age of the oldest (what `/admin/outbox` reports)."""
        async with self._db.read() as conn:
            pending = int(await conn.scalar(sa.select(sa.func.count()).where(outbox.c.sent_at.is_(None))) or 0)
            oldest = await conn.scalar(sa.select(sa.func.min(outbox.c.created_at)).where(outbox.c.sent_at.is_(None)))
        return OutboxStats(pending=pending, oldest_pending_age_s=round(time.time() - oldest, 3) if oldest else 0.0)
