"""Spans: OpenTelemetry tracing of requests, calls, saga steps and events.

`tracecontext` carries the W3C `traceparent` through HTTP, NATS, sagas and the outbox;
this module makes a span at each hop and exports it. `span()` starts an OpenTelemetry
span whose parent is the current `traceparent` (or one given), makes the span's own
`traceparent` current for the block (so calls made inside it are its children) and ends
it on exit, with status ERROR when the block raised a server-side failure.

Every span is recorded (the sampler is ALWAYS_ON): the keep-or-drop decision is made
once per trace, at the tail, by the place that sees all of a trace's spans — the console
in the embedded setup (spans reach it in batches on `SPANS_SUBJECT`), an OpenTelemetry
Collector with its `tail_sampling` processor when `OTEL_EXPORTER_OTLP_ENDPOINT` is set
(then spans also go out over OTLP/HTTP; the exporter is imported only in that case).

Until `install()` runs (or with `MESHOP_TRACING=false`), `span()` still hands calls a
child `traceparent`, so propagation and trace ids in logs work without any span cost.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Final

import msgspec
import structlog
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from opentelemetry.trace import (
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    Tracer,
    set_span_in_context,
)

from meshop.mesh import tracecontext
from meshop.mesh.errors import ProblemError

if TYPE_CHECKING:
    from nats.aio.client import Client as NatsClient

__all__ = ["SPANS_SUBJECT", "Span", "SpanKind", "SpanRecord", "Tracing", "annotate", "event", "fail", "install", "span"]

log = structlog.get_logger("meshop.tracing")

#: Where every process publishes its finished spans (msgpack lists of `SpanRecord`).
SPANS_SUBJECT: Final = "meshop.telemetry.spans"
_KINDS = {
    SpanKind.SERVER: "server",
    SpanKind.CLIENT: "client",
    SpanKind.INTERNAL: "internal",
    SpanKind.PRODUCER: "producer",
    SpanKind.CONSUMER: "consumer",
}

AttributeValue = str | bool | int | float


class SpanRecord(msgspec.Struct, array_like=True, gc=False):
    """One finished span as it travels to the console (times in ns since the epoch)."""

    trace_id: str
    span_id: str
    parent_id: str | None
    service: str
    instance: str
    name: str
    kind: str
    start_ns: int
    end_ns: int
    error: bool
    attributes: dict[str, AttributeValue]
    events: list[tuple[str, int, dict[str, AttributeValue]]]


class _NatsBatcher(SpanProcessor):
    """Publishes finished spans in batches: at most every `interval_s`, or at `max_batch`.

    Spans are telemetry, not business data: a batch that cannot be published (NATS down)
    is counted and dropped, and at most `max_pending` spans wait, so tracing can never
    hold a process's memory hostage.
    """

    def __init__(
        self,
        nc: NatsClient,
        loop: asyncio.AbstractEventLoop,
        *,
        service: str,
        instance: str,
        interval_s: float = 0.25,
        max_batch: int = 512,
        max_pending: int = 20_000,
    ) -> None:
        self._nc = nc
        self._loop = loop
        self._thread = threading.get_ident()
        self._service = service
        self._instance = instance
        self._interval_s = interval_s
        self._max_batch = max_batch
        self._max_pending = max_pending
        self._pending: list[SpanRecord] = []
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._encode = msgspec.msgpack.Encoder().encode
        self.published = 0
        self.dropped = 0

    def on_end(self, span: ReadableSpan) -> None:
        if threading.get_ident() != self._thread:  # a span ended off the loop: hand it over
            self._loop.call_soon_threadsafe(self.on_end, span)
            return
        if len(self._pending) >= self._max_pending:
            self.dropped += 1
            return
        self._pending.append(self._record(span))
        if len(self._pending) >= self._max_batch:
            self._flush()
        elif self._timer is None:
            self._timer = self._loop.call_later(self._interval_s, self._flush)

    def _record(self, span: ReadableSpan) -> SpanRecord:
        context = span.context
        parent = span.parent
        return SpanRecord(
            trace_id=f"{context.trace_id:032x}" if context else "",
            span_id=f"{context.span_id:016x}" if context else "",
            parent_id=f"{parent.span_id:016x}" if parent is not None else None,
            service=self._service,
            instance=self._instance,
            name=span.name,
            kind=_KINDS.get(span.kind, "internal"),
            start_ns=span.start_time or 0,
            end_ns=span.end_time or 0,
            error=span.status.status_code is StatusCode.ERROR,
            attributes=_plain(span.attributes),
            events=[(e.name, e.timestamp, _plain(e.attributes)) for e in span.events],
        )

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        task = self._loop.create_task(self._publish(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _publish(self, batch: list[SpanRecord]) -> None:
        try:
            await self._nc.publish(SPANS_SUBJECT, self._encode(batch))
            self.published += len(batch)
        except Exception as exc:  # NATS away: telemetry is dropped, never queued without bound
            self.dropped += len(batch)
            log.debug("spans dropped", count=len(batch), error=repr(exc))

    async def drain(self) -> None:
        self._flush()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        if threading.get_ident() == self._thread:
            self._flush()
        return True


def _plain(attributes: Mapping[str, Any] | None) -> dict[str, AttributeValue]:
    if not attributes:
        return {}
    return {k: v if isinstance(v, str | bool | int | float) else str(v) for k, v in attributes.items()}


class Tracing:
    """The tracer of one process and where its spans go."""

    def __init__(self, service: str, instance: str) -> None:
        self.service = service
        self.instance = instance
        self.provider = TracerProvider(
            sampler=ALWAYS_ON,
            resource=Resource.create({"service.name": service, "service.instance.id": instance}),
        )
        self.tracer: Tracer = self.provider.get_tracer("meshop")
        self._batcher: _NatsBatcher | None = None
        if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.trace.export import BatchSpanProcessor

            self.provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))

    def publish_to(self, nc: NatsClient) -> None:
        """Send finished spans to `SPANS_SUBJECT` on `nc` (call from the running loop)."""
        self._batcher = _NatsBatcher(nc, asyncio.get_running_loop(), service=self.service, instance=self.instance)
        self.provider.add_span_processor(self._batcher)

    @property
    def dropped(self) -> int:
        return self._batcher.dropped if self._batcher is not None else 0

    async def close(self) -> None:
        """Publish what is pending, then stop the exporters."""
        if self._batcher is not None:
            await self._batcher.drain()
        await asyncio.to_thread(self.provider.shutdown)


_tracer: Tracer | None = None
_span: ContextVar[Span | None] = ContextVar("meshop_span", default=None)


class _Current:
    """`span()`'s default parent: whatever traceparent is current."""


def install(tracing: Tracing | None) -> None:
    """Make `tracing` this process's tracer (None: propagation only, no spans)."""
    global _tracer
    _tracer = tracing.tracer if tracing is not None else None


def _parent_context(traceparent: str | None) -> Context | None:
    if traceparent is None or not tracecontext.valid(traceparent):
        return None
    parent = SpanContext(
        trace_id=int(traceparent[3:35], 16),
        span_id=int(traceparent[36:52], 16),
        is_remote=True,
        trace_flags=TraceFlags(int(traceparent[53:55], 16)),
    )
    return set_span_in_context(NonRecordingSpan(parent))


@contextlib.contextmanager
def span(
    name: str,
    kind: SpanKind = SpanKind.INTERNAL,
    *,
    parent: str | type[_Current] | None = _Current,
    attributes: Mapping[str, AttributeValue] | None = None,
    answers: tuple[type[BaseException], ...] = (),
    root: bool = True,
) -> Iterator[Span | None]:
    """A span around the block, a child of `parent` (default: the current traceparent).

    Inside the block the span's own traceparent is current. An exception marks the span
    as an error unless it is a client error (a `ProblemError` below 500) or one of
    `answers`: a declined card or a 404 is an answer, not a failure of the system. Yields
    None when tracing is off.

    A parent whose sampled flag is off (W3C `-00`) makes no span, and neither does a
    missing parent when `root` is False (background work: a JWKS refresh, an untraced
    event): the block then runs under a not-sampled traceparent, so what it calls makes
    no spans either instead of starting traces of its own.
    """
    parent_tp = tracecontext.current() if parent is _Current else parent
    assert not isinstance(parent_tp, type)
    tracer = _tracer
    if parent_tp is None or not tracecontext.valid(parent_tp):
        if not root:
            tracer, parent_tp = None, tracecontext.start(sampled=False)
    elif not int(parent_tp[53:55], 16) & 1:  # the caller's sampled flag is off
        tracer = None
    if tracer is None:
        with tracecontext.use_traceparent(tracecontext.child(parent_tp)):
            yield None
        return
    otel_span = tracer.start_span(name, context=_parent_context(parent_tp), kind=kind, attributes=attributes)
    ids = otel_span.get_span_context()
    token = _span.set(otel_span)
    try:
        with tracecontext.use_traceparent(f"00-{ids.trace_id:032x}-{ids.span_id:016x}-01"):
            yield otel_span
    except BaseException as exc:
        if not isinstance(exc, answers) and _is_failure(exc):
            otel_span.set_status(Status(StatusCode.ERROR, repr(exc)[:200]))
        raise
    finally:
        _span.reset(token)
        otel_span.end()


def _is_failure(exc: BaseException) -> bool:
    if isinstance(exc, ProblemError):
        return exc.status >= 500
    return not isinstance(exc, GeneratorExit | asyncio.CancelledError)


def fail(span_: Span | None, description: str) -> None:
    """Mark `span_` as failed (a 5xx answer, a transport error) without an exception."""
    if span_ is not None:
        span_.set_status(Status(StatusCode.ERROR, description))


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
