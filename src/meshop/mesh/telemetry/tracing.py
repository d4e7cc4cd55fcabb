"""Spans: tracing of requests, calls, saga steps and events, in OpenTelemetry's data model.

`tracecontext` carries the W3C `traceparent` through HTTP, NATS, sagas and the outbox;
this module makes a span at each hop and exports it. `span()` starts a span whose parent
is the current `traceparent` (or one given), makes the span's own `traceparent` current
for the block (so calls made inside it are its children) and ends it on exit, as an
error when the block raised a server-side failure.

Every span is recorded: the keep-or-drop decision is made once per trace, at the tail,
by the place that sees all of a trace's spans — the console in the embedded setup
(spans reach it in batches on `SPANS_SUBJECT`), an OpenTelemetry Collector with its
`tail_sampling` processor when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (spans then also go
out over OTLP/HTTP through the OpenTelemetry SDK's exporter, imported only in that case).
A span here is a small struct (OpenTelemetry's fields: trace and span ids, parent, kind,
times, attributes, events, error status) rather than an SDK span: 2 MB less per process
and a fraction of the CPU per span (docs/decisions/0011).

Until `install()` runs (or with `MESHOP_TRACING=false`), `span()` still hands calls a
child `traceparent`, so propagation and trace ids in logs work without any span cost.
"""

from __future__ import annotations

import asyncio
import enum
import os
import threading
import time
from collections.abc import Callable, Mapping
from contextvars import ContextVar, Token
from types import TracebackType
from typing import TYPE_CHECKING, Final

import msgspec
import structlog

from meshop.mesh.errors import ProblemError
from meshop.mesh.telemetry import tracecontext
from meshop.mesh.telemetry.spanrecord import AttributeValue, SpanRecord, msgpack_array_header

if TYPE_CHECKING:
    from nats.aio.client import Client as NatsClient

__all__ = [
    "SPANS_SUBJECT",
    "AttributeValue",
    "Span",
    "SpanKind",
    "SpanRecord",
    "Tracing",
    "annotate",
    "end_span",
    "event",
    "fail",
    "install",
    "open_span",
    "recording",
    "span",
]

log = structlog.get_logger("meshop.tracing")
# Module-level Finals are C statics when compiled; `time.x()` looks `x` up on the module per call (~270 instructions).
_time_ns: Final = time.time_ns
_thread_id: Final = threading.get_ident

#: Where every process publishes its finished spans (msgpack lists of `SpanRecord`).
SPANS_SUBJECT: Final = "meshop.telemetry.spans"


class SpanKind(enum.Enum):
    """OpenTelemetry's span kinds."""

    INTERNAL = "internal"
    SERVER = "server"
    CLIENT = "client"
    PRODUCER = "producer"
    CONSUMER = "consumer"


#: What the code around a block sees of its span.
Span = SpanRecord
Sink = Callable[[SpanRecord], None]


class _NatsBatcher:
    """Publishes finished spans in batches: at most every `interval_s`, or at `max_batch`.

    Spans are telemetry, not business data: a batch that cannot be published (NATS down)
    is counted and dropped, and at most `max_pending` spans wait, so tracing can never
    hold a process's memory hostage. A span is encoded as it arrives, into one buffer:
    what waits for the batch is bytes, not a span's dicts and lists that the garbage
    collector would walk until they are sent (at ~8 000 requests a second, thousands).
    """

    def __init__(
        self,
        nc: NatsClient,
        loop: asyncio.AbstractEventLoop,
        *,
        interval_s: float = 0.25,
        max_batch: int = 512,
        max_pending: int = 20_000,
    ) -> None:
        self._nc = nc
        self._loop = loop
        self._loop_thread = _thread_id()
        self._interval_s = interval_s
        self._max_batch = max_batch
        self._max_pending = max_pending
        self._buffer = bytearray()
        self._count = 0
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._encode_into = msgspec.msgpack.Encoder().encode_into
        self.published = 0
        self.dropped = 0

    def __call__(self, record: SpanRecord) -> None:
        if _thread_id() != self._loop_thread:  # a span ended off the loop: hand it over
            self._loop.call_soon_threadsafe(self, record)
            return
        if self._count >= self._max_pending:
            self.dropped += 1
            return
        self._encode_into(record, self._buffer, -1)
        self._count += 1
        if self._count >= self._max_batch:
            self._flush()
        elif self._timer is None:
            self._timer = self._loop.call_later(self._interval_s, self._flush)

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._count:
            return
        # A msgpack array of the encoded spans: the same bytes as encoding the list at once.
        count, body = self._count, self._buffer
        self._buffer, self._count = bytearray(), 0
        task = self._loop.create_task(self._publish(msgpack_array_header(count) + body, count))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _publish(self, payload: bytes, count: int) -> None:
        try:
            await self._nc.publish(SPANS_SUBJECT, payload)
            self.published += count
        except Exception as exc:  # NATS away: telemetry is dropped, never queued without bound
            self.dropped += count
            log.debug("spans dropped", count=count, error=repr(exc))

    async def drain(self) -> None:
        self._flush()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


class _OtlpExport:
    """Spans to an OTLP/HTTP endpoint through the OpenTelemetry SDK's batching exporter.

    The exporter reads `OTEL_EXPORTER_OTLP_*` itself (endpoint, headers, timeout).
    """

    def __init__(self, service: str, instance: str) -> None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        self._resource = Resource.create({"service.name": service, "service.instance.id": instance})
        self.processor = BatchSpanProcessor(OTLPSpanExporter())

    def __call__(self, record: SpanRecord) -> None:
        from opentelemetry import trace
        from opentelemetry.sdk.trace import Event, ReadableSpan
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope

        def context(span_id: str) -> trace.SpanContext:
            return trace.SpanContext(
                int(record.trace_id, 16), int(span_id, 16), is_remote=False, trace_flags=trace.TraceFlags(1)
            )

        status = (
            trace.Status(trace.StatusCode.ERROR, str(record.attributes.get("error.message", "")))
            if record.error
            else trace.Status(trace.StatusCode.UNSET)
        )
        self.processor.on_end(
            ReadableSpan(
                name=record.name,
                context=context(record.span_id),
                parent=context(record.parent_id) if record.parent_id else None,
                resource=self._resource,
                attributes=record.attributes,
                events=[Event(name, attrs, timestamp=at) for name, at, attrs in record.events],
                kind=trace.SpanKind[record.kind.upper()],
                status=status,
                start_time=record.start_ns,
                end_time=record.end_ns,
                instrumentation_scope=InstrumentationScope("meshop"),
            )
        )

    def close(self) -> None:
        self.processor.shutdown()  # type: ignore[no-untyped-call]


class Tracing:
    """This process's spans and where they go."""

    def __init__(self, service: str, instance: str) -> None:
        self.service = service
        self.instance = instance
        self._sinks: list[Sink] = []
        self._batcher: _NatsBatcher | None = None
        self._otlp: _OtlpExport | None = None
        if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
            self._otlp = _OtlpExport(service, instance)
            self._sinks.append(self._otlp)

    def export_to(self, sink: Sink) -> None:
        """Hand every finished span to `sink` too (tests, another exporter)."""
        self._sinks.append(sink)

    def publish_to(self, nc: NatsClient) -> None:
        """Send finished spans to `SPANS_SUBJECT` on `nc` (call from the running loop)."""
        self._batcher = _NatsBatcher(nc, asyncio.get_running_loop())
        self._sinks.append(self._batcher)

    def finish(self, record: SpanRecord, end_ns: int = 0) -> None:
        """End `record` at `end_ns` (0: now) and hand it to the exporters."""
        record.end_ns = end_ns or _time_ns()
        for sink in self._sinks:
            sink(record)

    @property
    def dropped(self) -> int:
        return self._batcher.dropped if self._batcher is not None else 0

    async def close(self) -> None:
        """Publish what is pending, then stop the exporters."""
        if self._batcher is not None:
            await self._batcher.drain()
        if self._otlp is not None:
            await asyncio.to_thread(self._otlp.close)


_tracing: Tracing | None = None
_span: ContextVar[SpanRecord | None] = ContextVar("meshop_span", default=None)
#: A flags byte's last hex digit when its bit 0 (sampled) is set.
_SAMPLED = frozenset("13579bdf")


def install(tracing: Tracing | None) -> None:
    """Make `tracing` this process's tracer (None: propagation only, no spans)."""
    global _tracing
    _tracing = tracing


class _Current:
    """`span()`'s default parent: whatever traceparent is current."""


class span:
    """A span around the block, a child of `parent` (default: the current traceparent).

    Inside the block the span's own traceparent is current. An exception marks the span
    as an error unless it is a client error (a `ProblemError` below 500) or one of
    `answers`: a declined card or a 404 is an answer, not a failure of the system. Gives
    None when tracing is off.

    A parent whose sampled flag is off (W3C `-00`) makes no span, and neither does a
    missing parent when `root` is False (background work: a JWKS refresh, an untraced
    event): the block then runs under a not-sampled traceparent, so what it calls makes
    no spans either instead of starting traces of its own.

    A class rather than a generator context manager: two of these run per gateway
    request, and `__enter__`/`__exit__` cost a fraction of a generator's frames.
    """

    __slots__ = ("_answers", "_attributes", "_kind", "_name", "_parent", "_record", "_root", "_token", "_tp")
    _record: SpanRecord | None
    _token: Token[SpanRecord | None]
    _tp: Token[str | None]

    def __init__(
        self,
        name: str,
        kind: SpanKind = SpanKind.INTERNAL,
        *,
        parent: str | type[_Current] | None = _Current,
        attributes: Mapping[str, AttributeValue] | None = None,
        answers: tuple[type[BaseException], ...] = (),
        root: bool = True,
    ) -> None:
        self._name = name
        self._kind = kind
        self._parent = parent
        self._attributes = attributes
        self._answers = answers
        self._root = root

    def __enter__(self) -> SpanRecord | None:
        parent = self._parent
        if parent is _Current:
            parent_tp = tracecontext.current()  # valid or None: only ever set checked, or by a span
        else:
            assert not isinstance(parent, type)
            parent_tp = parent if parent is None or tracecontext.valid(parent) else None
        record, own = open_span(self._name, self._kind, parent=parent_tp, attributes=self._attributes, root=self._root)
        self._record = record
        if record is not None:
            self._token = _span.set(record)
        self._tp = tracecontext.enter(own)
        return record

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, _tb: TracebackType | None
    ) -> None:
        tracecontext.leave(self._tp)
        record = self._record
        if record is None:
            return
        if exc is not None and not isinstance(exc, self._answers) and _is_failure(exc):
            fail(record, repr(exc)[:200])
        _span.reset(self._token)
        end_span(record)


def open_span(
    name: str,
    kind: SpanKind,
    *,
    parent: str | None,
    attributes: Mapping[str, AttributeValue] | None = None,
    root: bool = True,
) -> tuple[SpanRecord | None, str]:
    """A span that is not a block (work driven by callbacks): `span()` without the context.

    `parent` is a valid traceparent or None. Gives the span's record (None when it is not
    recorded, as `span()` decides) and the traceparent of its children; `end_span` ends it.
    """
    tracer = _tracing
    if parent is None:
        if not root:
            tracer, parent = None, tracecontext.start(sampled=False)
    elif parent[54] not in _SAMPLED:  # the caller's sampled flag (bit 0 of the flags) is off
        tracer = None
    if tracer is None:
        # a child of a parent known to be valid: no second check (tracecontext.child's)
        if parent:
            return None, f"{parent[:35]}-{tracecontext.span_id()}-{parent[53:55]}"
        return None, tracecontext.start()
    if parent is not None:
        trace_id, span_id = parent[3:35], tracecontext.span_id()
    else:
        trace_id, span_id = tracecontext.new_ids()
    record = SpanRecord(
        trace_id,
        span_id,
        parent[36:52] if parent is not None else None,
        tracer.service,
        tracer.instance,
        name,
        kind._value_,  # not `.value`: a property call
        _time_ns(),
        0,
        False,
        dict(attributes) if attributes else {},
        [],
    )
    return record, f"00-{trace_id}-{span_id}-01"


def end_span(record: SpanRecord, end_ns: int = 0) -> None:
    """End a recorded span (at `end_ns`, 0: now) and hand it to the exporters."""
    if _tracing is not None:
        _tracing.finish(record, end_ns)


def _is_failure(exc: BaseException) -> bool:
    if isinstance(exc, ProblemError):
        return exc.status >= 500
    return not isinstance(exc, GeneratorExit | asyncio.CancelledError)


def fail(span_: SpanRecord | None, description: str) -> None:
    """Mark `span_` as failed (a 5xx answer, a transport error) without an exception."""
    if span_ is not None:
        span_.error = True
        span_.attributes["error.message"] = description


def recording() -> SpanRecord | None:
    """The current span if it is still recording (to skip building events nobody keeps)."""
    current = _span.get()
    return current if current is not None and current.end_ns == 0 else None


def event(name: str, attributes: Mapping[str, AttributeValue] | None = None) -> None:
    """Add an event (a retry, a breaker decision) to the current span, if any."""
    current = _span.get()
    if current is not None and current.is_recording():  # not one that ended (a spawned task's parent)
        current.add_event(name, attributes)


def annotate(attributes: Mapping[str, AttributeValue]) -> None:
    """Set attributes (`{"order.id": ...}`) on the current span, if any."""
    current = _span.get()
    if current is not None and current.is_recording():
        current.set_attributes(attributes)
