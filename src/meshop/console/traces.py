"""The console's trace store: spans in, whole traces decided at the tail, kept traces out.

Every process publishes its finished spans on `SPANS_SUBJECT`. The store buffers them per
trace until the trace goes quiet (`decision_wait_s` without a new span, or `max_wait_s`
after its first), then applies the sampling policy once to the whole trace. Kept traces
live in a bounded ring (oldest out first) and are what the console browses; a late span
of a kept trace joins it, one of a dropped trace is dropped too. Pending traces are
bounded as well: past `max_pending` the oldest is decided early.

A kept trace holds its spans msgpack-encoded and compressed, beside the few fields
queries filter on: a thousand kept checkout traces are tens of thousands of spans, and a
span as objects (its struct, strings, attribute dict and event list) takes ~4x the bytes
of its encoding, which compresses ~4x again (every span repeats its trace id, service,
instance and attribute names). Only the traces a query returns are decoded.

A pending trace holds its spans as they arrived, encoded, one after another in one buffer:
intake reads only each span's trace id, and a trace's spans are decoded once, when it is
decided, so a kept trace is compressed from the bytes that came in. Under a shop's load
(150 checkouts/s, a checkout's trace going quiet after 1–5 s) ~18 000 spans wait at
once: as objects they took ~20 MiB, encoded 4.7 (docs/decisions/0037). Pending traces are
bounded by their bytes too (`max_pending_bytes`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import msgspec
import structlog

from meshop.console.sampling import SamplingPolicy, decide, root_of, route_of
from meshop.contracts import orders
from meshop.contracts.console import Span, SpanEvent, Trace
from meshop.mesh.telemetry.spanrecord import msgpack_array_header
from meshop.mesh.telemetry.tracing import SPANS_SUBJECT, SpanRecord

if TYPE_CHECKING:
    from nats.aio.client import Client as NatsClient
    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription

log = structlog.get_logger("meshop.console.traces")
_decode = msgspec.msgpack.Decoder(list[SpanRecord]).decode
_decode_one = msgspec.msgpack.Decoder(SpanRecord).decode
_encode = msgspec.msgpack.Encoder().encode
ORDER_ATTRIBUTE = orders.TRACE_ATTRIBUTE


class _Head(msgspec.Struct, array_like=True):
    """What intake reads of an encoded span: its first field, the trace it belongs to."""

    trace_id: str


_heads = msgspec.msgpack.Decoder(list[_Head]).decode
#: Each span of a batch as its encoded bytes (views of the batch, copied where kept).
_raw_spans = msgspec.msgpack.Decoder(list[msgspec.Raw]).decode


@dataclass(slots=True)
class _Pending:
    """A trace waiting for its decision: its spans encoded, one after another."""

    first_seen: float
    last_seen: float
    count: int = 0
    encoded: bytearray = field(default_factory=bytearray)

    def payload(self) -> bytes:
        """The spans as one msgpack array: what a batch of them is on the wire."""
        return msgpack_array_header(self.count) + self.encoded


#: Late spans of a kept trace wait uncompressed, up to this many, before it is packed again.
_LATE_BATCH = 64


@dataclass(slots=True)
class _Kept:
    """A kept trace: its spans encoded and compressed, and what queries filter on."""

    kept_because: str
    packed: bytes = b""
    #: Spans that arrived after the decision, not yet packed (so that a trace that keeps
    #: growing is not decompressed and compressed again for every span).
    late: list[SpanRecord] = field(default_factory=list)
    order_id: str | None = None
    error: bool = False
    start_ns: int = 0
    end_ns: int = 0
    root: str = ""

    @classmethod
    def of(cls, spans: list[SpanRecord], kept_because: str, *, encoded: bytes) -> _Kept:
        """A kept trace of `spans`, `encoded` their msgpack array (as they arrived)."""
        kept = cls(kept_because)
        kept.pack(spans, encoded=encoded)
        return kept

    @property
    def duration_ms(self) -> float:
        return round((self.end_ns - self.start_ns) / 1e6, 3)

    def spans(self) -> list[SpanRecord]:
        return [*_decode(zlib.decompress(self.packed)), *self.late]

    def pack(self, spans: list[SpanRecord], *, encoded: bytes | None = None) -> None:
        # level 1: most of the gain, a fraction of the CPU
        self.packed = zlib.compress(_encode(spans) if encoded is None else encoded, 1)
        self.late = []
        found = (str(s.attributes[ORDER_ATTRIBUTE]) for s in spans if ORDER_ATTRIBUTE in s.attributes)
        self.order_id = next(found, None)
        self.error = any(s.error for s in spans)
        self.start_ns = min(s.start_ns for s in spans)
        self.end_ns = max(s.end_ns for s in spans)
        self.root = route_of(root_of(spans))

    def join(self, record: SpanRecord) -> None:
        """A late span: kept with the others, and what queries filter on brought up to date."""
        if record.parent_id is None or len(self.late) >= _LATE_BATCH:  # a root changes the route
            self.pack([*self.spans(), record])
            return
        self.late.append(record)
        if self.order_id is None and ORDER_ATTRIBUTE in record.attributes:
            self.order_id = str(record.attributes[ORDER_ATTRIBUTE])
        self.error = self.error or record.error
        self.start_ns = min(self.start_ns, record.start_ns)
        self.end_ns = max(self.end_ns, record.end_ns)


class TraceStore:
    def __init__(
        self,
        policy: SamplingPolicy | None = None,
        *,
        capacity: int = 1000,
        max_pending: int = 20_000,
        max_pending_bytes: int = 16 * 2**20,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policy = policy or SamplingPolicy()
        self._capacity = capacity
        self._max_pending = max_pending
        self._max_pending_bytes = max_pending_bytes
        self._clock = clock
        self._pending: OrderedDict[str, _Pending] = OrderedDict()
        self._pending_bytes = 0  # the encoded spans of every pending trace
        self._kept: OrderedDict[str, _Kept] = OrderedDict()
        self._dropped: OrderedDict[str, None] = OrderedDict()  # recent drops: their late spans go too
        self._counts = {"spans": 0, "decided": 0, "error": 0, "slow": 0, "critical": 0, "base": 0, "dropped": 0}
        self._subscription: Subscription | None = None
        self._task: asyncio.Task[None] | None = None

    # -- intake and decisions (no I/O: the unit tests drive these with a fake clock) --

    def add(self, spans: list[SpanRecord]) -> None:
        """Spans as objects: the same as receiving them in a batch."""
        self.receive(_encode(spans))

    def receive(self, payload: bytes) -> None:
        """A batch as published on `SPANS_SUBJECT` (a msgpack array of spans).

        Raises msgspec.DecodeError, having taken none of it, when it is not an array of
        spans that each start with a trace id.
        """
        heads, raw_spans = _heads(payload), _raw_spans(payload)
        now = self._clock()
        self._counts["spans"] += len(raw_spans)
        for head, raw in zip(heads, raw_spans, strict=True):
            trace_id = head.trace_id
            if (kept := self._kept.get(trace_id)) is not None:
                self._join(kept, raw)
            elif trace_id in self._dropped:
                continue
            else:
                trace = self._pending.get(trace_id)
                if trace is None:
                    trace = self._pending[trace_id] = _Pending(first_seen=now, last_seen=now)
                trace.encoded += raw
                trace.count += 1
                trace.last_seen = now
                self._pending_bytes += len(raw)
        while len(self._pending) > self._max_pending or self._pending_bytes > self._max_pending_bytes:
            self._decide(*self._pending.popitem(last=False))

    def decide_due(self) -> int:
        """Decide every trace that went quiet or waited long enough; returns how many."""
        now = self._clock()
        wait, longest = self.policy.decision_wait_s, self.policy.max_wait_s
        due = [
            t
            for t, trace in self._pending.items()
            if now - trace.last_seen >= wait or now - trace.first_seen >= longest
        ]
        for trace_id in due:
            self._decide(trace_id, self._pending.pop(trace_id))
        return len(due)

    def _decide(self, trace_id: str, trace: _Pending) -> None:
        self._counts["decided"] += 1
        self._pending_bytes -= len(trace.encoded)
        encoded = trace.payload()
        try:
            spans = _decode(encoded)
        except msgspec.DecodeError as exc:  # a span that began with a trace id and then was not one
            log.warning("undecodable span in a trace, trace dropped", trace_id=trace_id, error=str(exc))
            spans = []
        reason = decide(self.policy, spans) if spans else None
        if reason is None:
            self._counts["dropped"] += 1
            self._dropped[trace_id] = None
            if len(self._dropped) > 10 * self._capacity:
                self._dropped.popitem(last=False)
            return
        self._counts[reason] += 1
        self._kept[trace_id] = _Kept.of(spans, reason, encoded=encoded)
        if len(self._kept) > self._capacity:
            self._kept.popitem(last=False)

    @staticmethod
    def _join(kept: _Kept, raw: msgspec.Raw) -> None:
        try:
            record = _decode_one(raw)
        except msgspec.DecodeError as exc:
            log.warning("undecodable late span, dropped", error=str(exc))
            return
        kept.join(record)

    # -- reading --

    def query(
        self, *, order_id: str | None = None, errors: bool = False, slow: bool = False, limit: int = 50
    ) -> list[Trace]:
        """Kept traces, newest first, filtered by order id, errors and slowness."""
        out: list[Trace] = []
        for trace_id in reversed(self._kept):
            kept = self._kept[trace_id]
            if order_id is not None and kept.order_id != order_id:
                continue
            if errors and not kept.error:
                continue
            if slow and kept.duration_ms <= self.policy.slow_ms.get(kept.root, self.policy.slow_ms_default):
                continue
            out.append(_view(trace_id, kept))
            if len(out) >= limit:
                break
        return out

    def get(self, trace_id: str) -> Trace | None:
        kept = self._kept.get(trace_id)
        return _view(trace_id, kept) if kept is not None else None

    def stats(self) -> dict[str, int]:
        return {
            **self._counts,
            "pending": len(self._pending),
            "pending_bytes": self._pending_bytes,
            "kept": len(self._kept),
        }

    # -- wiring to NATS --

    async def start(self, nc: NatsClient, *, interval_s: float = 0.25) -> None:
        async def receive(msg: Msg) -> None:
            try:
                self.receive(msg.data)
            except msgspec.DecodeError as exc:
                log.warning("undecodable span batch", error=str(exc))

        self._subscription = await nc.subscribe(SPANS_SUBJECT, cb=receive, pending_msgs_limit=10_000)
        self._task = asyncio.create_task(self._decide_forever(interval_s), name="trace-decisions")

    async def _decide_forever(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            self.decide_due()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._subscription is not None:
            with contextlib.suppress(Exception):
                await self._subscription.unsubscribe()


def _view(trace_id: str, kept: _Kept) -> Trace:
    spans = sorted(kept.spans(), key=lambda s: s.start_ns)
    start = spans[0].start_ns
    return Trace(
        trace_id=trace_id,
        duration_ms=kept.duration_ms,
        started_at=start / 1e9,
        root=kept.root,
        services=sorted({s.service for s in spans}),
        status="error" if kept.error else "ok",
        kept_because=kept.kept_because,
        order_id=kept.order_id,
        spans=[
            Span(
                service=s.service,
                name=s.name,
                start_ms=round((s.start_ns - start) / 1e6, 3),
                duration_ms=round((s.end_ns - s.start_ns) / 1e6, 3),
                status="error" if s.error else "ok",
                kind=s.kind,
                span_id=s.span_id,
                parent_id=s.parent_id,
                attributes=s.attributes,
                events=[
                    SpanEvent(name=name, time_ms=round((t - start) / 1e6, 3), attributes=attrs)
                    for name, t, attrs in s.events
                ],
            )
            for s in spans
        ],
    )
