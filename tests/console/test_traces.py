"""Tail sampling and the console's trace store, with a fake clock."""

from __future__ import annotations

import random
import sys
import tracemalloc

import hypothesis.strategies as st
import msgspec
import pytest
from hypothesis import given

from meshop.console.sampling import SamplingPolicy, decide, hash_fraction
from meshop.console.traces import TraceStore
from meshop.mesh.telemetry.tracing import SpanRecord
from meshop.mesh.testing import FakeClock

POLICY = SamplingPolicy(base_rate=0.1, critical={"POST /api/orders": 0.5}, slow_ms={"GET /api/slow": 50.0})
KEEP_LOW = "0" * 16 + "0" * 15 + "1"  # hash fraction ~0: inside every positive rate
KEEP_HIGH = "0" * 16 + "f" * 16  # hash fraction ~1: outside every rate below 1


def record(
    trace_id: str,
    span_id: str,
    *,
    parent: str | None = None,
    start_ms: float = 0.0,
    duration_ms: float = 1.0,
    error: bool = False,
    service: str = "gateway",
    route: tuple[str, str] | None = ("GET", "/api/catalog/products"),
    attributes: dict[str, str | int | float | bool] | None = None,
) -> SpanRecord:
    attrs: dict[str, str | int | float | bool] = dict(attributes or {})
    if route is not None:
        attrs["http.request.method"], attrs["http.route"] = route
    start = int(1e15 + start_ms * 1e6)
    return SpanRecord(
        trace_id=trace_id,
        span_id=span_id,
        parent_id=parent,
        service=service,
        instance="i-1",
        name="span " + span_id,
        kind="server",
        start_ns=start,
        end_ns=start + int(duration_ms * 1e6),
        error=error,
        attributes=attrs,
        events=[],
    )


def test_an_error_anywhere_keeps_the_trace() -> None:
    spans = [record(KEEP_HIGH, "a" * 16), record(KEEP_HIGH, "b" * 16, parent="a" * 16, error=True, route=None)]
    assert decide(POLICY, spans) == "error"


def test_slow_is_judged_against_the_root_routes_threshold() -> None:
    slow = [record(KEEP_HIGH, "a" * 16, route=("GET", "/api/slow"), duration_ms=60)]
    fast = [record(KEEP_HIGH, "a" * 16, route=("GET", "/api/slow"), duration_ms=40)]
    default = [record(KEEP_HIGH, "a" * 16, duration_ms=60)]  # default threshold 1000 ms
    assert decide(POLICY, slow) == "slow"
    assert decide(POLICY, fast) is None
    assert decide(POLICY, default) is None


def test_the_trace_duration_spans_every_span_not_just_the_root() -> None:
    # the saga's steps run after the POST answered: they make the trace long
    spans = [
        record(KEEP_HIGH, "a" * 16, route=("GET", "/api/slow"), duration_ms=5),
        record(KEEP_HIGH, "b" * 16, parent="a" * 16, start_ms=70, duration_ms=5, route=None),
    ]
    assert decide(POLICY, spans) == "slow"


def test_critical_routes_and_the_rest_are_kept_at_their_rates() -> None:
    checkout = ("POST", "/api/orders")
    assert decide(POLICY, [record(KEEP_LOW, "a" * 16, route=checkout)]) == "critical"
    assert decide(POLICY, [record(KEEP_HIGH, "a" * 16, route=checkout)]) is None
    assert decide(POLICY, [record(KEEP_LOW, "a" * 16)]) == "base"
    assert decide(POLICY, [record(KEEP_HIGH, "a" * 16)]) is None
    middle = "0" * 16 + "4" + "0" * 15  # fraction 0.25: above the base rate, below checkout's
    assert decide(POLICY, [record(middle, "a" * 16, route=checkout)]) == "critical"
    assert decide(POLICY, [record(middle, "a" * 16)]) is None


def test_the_base_rate_keeps_about_that_share() -> None:
    rng = random.Random(7)  # W3C trace ids are random: so are these (seeded, so the test is stable)
    trace_ids = [f"{rng.getrandbits(128):032x}" for _ in range(2000)]
    kept = sum(decide(POLICY, [record(t, "a" * 16)]) is not None for t in trace_ids)
    assert 0.1 * 2000 - 80 <= kept <= 0.1 * 2000 + 80  # ~6 sigma of a binomial(2000, 0.1)


@given(st.text("0123456789abcdef", min_size=32, max_size=32))
def test_the_hash_fraction_is_in_the_unit_interval(trace_id: str) -> None:
    assert 0.0 <= hash_fraction(trace_id) < 1.0


def test_a_trace_is_decided_once_it_goes_quiet_with_its_late_spans_in() -> None:
    clock = FakeClock(100.0)
    store = TraceStore(POLICY, clock=clock)
    store.add([record(KEEP_LOW, "a" * 16, attributes={"order.id": "o-1"})])
    clock.now += 1.5
    store.add([record(KEEP_LOW, "b" * 16, parent="a" * 16, service="payments", route=None)])
    clock.now += 1.5  # 3 s after the first span, 1.5 s after the last: still waiting
    assert store.decide_due() == 0
    assert store.query() == []
    clock.now += 0.6
    assert store.decide_due() == 1
    [trace] = store.query(order_id="o-1")
    assert trace.kept_because == "base"
    assert trace.services == ["gateway", "payments"]
    assert [s.start_ms for s in trace.spans] == [0.0, 0.0]
    store.add([record(KEEP_LOW, "c" * 16, parent="a" * 16, service="shipping", route=None)])  # late
    assert len(store.get(KEEP_LOW).spans) == 3  # type: ignore[union-attr]


def test_a_late_span_changes_what_queries_find_of_a_kept_trace() -> None:
    """An error, a longer duration or the order id can arrive after the decision."""
    clock = FakeClock(100.0)
    store = TraceStore(POLICY, clock=clock)
    store.add([record(KEEP_LOW, "a" * 16, duration_ms=5)])
    clock.now += 5
    store.decide_due()
    assert store.query(errors=True) == []
    assert store.query(order_id="o-9") == []
    late = record(KEEP_LOW, "b" * 16, parent="a" * 16, start_ms=3000, error=True, attributes={"order.id": "o-9"})
    store.add([late])
    [trace] = store.query(errors=True, slow=True)
    assert (trace.status, trace.order_id, trace.duration_ms) == ("error", "o-9", 3001.0)
    assert store.query(order_id="o-9") == [trace]
    assert trace.spans[1].attributes == late.attributes  # kept encoded, read back whole


def test_a_kept_trace_that_keeps_growing_keeps_every_late_span() -> None:
    clock = FakeClock(100.0)
    store = TraceStore(POLICY, clock=clock)
    store.add([record(KEEP_LOW, "0" * 16)])
    clock.now += 5
    store.decide_due()
    for n in range(1, 151):  # more than one batch of late spans
        store.add([record(KEEP_LOW, f"{n:016x}", parent="0" * 16, start_ms=n, route=None)])
    trace = store.get(KEEP_LOW)
    assert trace is not None
    assert [s.span_id for s in trace.spans] == [f"{n:016x}" for n in range(151)]
    assert trace.duration_ms == 151.0
    assert trace.root == "GET /api/catalog/products"


def test_kept_traces_are_held_encoded_in_a_fraction_of_their_spans_memory() -> None:
    def spans_of(t: int) -> list[SpanRecord]:  # as a batch from NATS: objects only the store keeps
        attributes = {"peer.service": "inventory", "url.path": f"/internal/reservations/{t}"}
        parent = f"{0:016x}"
        return [
            record(
                f"{t:032x}", f"{n:016x}", parent=parent if n else None, start_ms=n, route=None, attributes=attributes
            )
            for n in range(40)
        ]

    as_objects = sum(_deep_size(s) for t in range(200) for s in spans_of(t))
    clock = FakeClock(100.0)
    store = TraceStore(SamplingPolicy(base_rate=1.0), capacity=200, clock=clock)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for t in range(200):
        store.add(spans_of(t))
    clock.now += 60
    store.decide_due()
    kept = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert store.stats()["kept"] == 200
    assert kept < as_objects / 4, (kept, as_objects)


def _deep_size(span: SpanRecord) -> int:
    """Bytes of one span as objects: its struct, strings, attribute dict and its items, events."""
    parts = [span, span.trace_id, span.span_id, span.parent_id, span.service, span.instance, span.name, span.kind]
    parts += [span.attributes, *span.attributes, *span.attributes.values(), span.events]
    return sum(sys.getsizeof(p) for p in parts if p is not None)


def _checkout_spans(t: int) -> list[SpanRecord]:
    """A checkout-sized trace: 40 spans, as a batch from NATS makes them."""
    attributes = {"peer.service": "inventory", "url.path": f"/internal/reservations/{t}"}
    parent = f"{0:016x}"
    return [
        record(f"{t:032x}", f"{n:016x}", parent=parent if n else None, start_ms=n, route=None, attributes=attributes)
        for n in range(40)
    ]


def test_pending_traces_are_held_encoded_in_a_fraction_of_their_spans_memory() -> None:
    """Under load thousands of traces wait for their decision at once: they wait as bytes."""
    batches = [msgspec.msgpack.encode(_checkout_spans(t)) for t in range(200)]
    as_objects = sum(_deep_size(s) for t in range(200) for s in _checkout_spans(t))
    store = TraceStore(SamplingPolicy(base_rate=1.0), capacity=200, clock=FakeClock(100.0))
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for payload in batches:
        store.receive(payload)
    pending = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert store.stats()["pending"] == 200
    assert store.stats()["pending_bytes"] == sum(
        len(p) - 3 for p in batches
    )  # less each array's header (0xdc, a count)
    assert pending < as_objects / 3, (pending, as_objects)


def test_pending_traces_are_bounded_by_their_bytes() -> None:
    """Past `max_pending_bytes` the oldest pending traces are decided early, as past `max_pending`."""
    clock = FakeClock(100.0)
    one_trace = len(msgspec.msgpack.encode(_checkout_spans(0))) - 3  # less the array's header
    store = TraceStore(SamplingPolicy(base_rate=1.0), max_pending_bytes=int(2.5 * one_trace), clock=clock)
    for t in range(4):
        store.add(_checkout_spans(t))
    assert store.stats()["pending"] == 2
    assert store.stats()["pending_bytes"] == 2 * one_trace
    assert [t.trace_id for t in store.query()] == [f"{1:032x}", f"{0:032x}"]  # decided early, and kept
    assert len(store.query()[0].spans) == 40


def test_a_batch_that_is_not_spans_is_refused_whole() -> None:
    store = TraceStore(POLICY, clock=FakeClock(100.0))
    good = msgspec.msgpack.encode(record(KEEP_LOW, "a" * 16))
    for payload in (b"\x92" + good + msgspec.msgpack.encode(7), b"\x92" + good, b"not msgpack"):
        with pytest.raises(msgspec.DecodeError):
            store.receive(payload)
    assert store.stats()["spans"] == 0
    assert store.stats()["pending"] == 0


def test_a_trace_with_a_span_that_does_not_decode_is_dropped_and_the_others_kept() -> None:
    """A span whose trace id reads but whose other fields do not: its trace alone goes."""
    clock = FakeClock(100.0)
    store = TraceStore(POLICY, clock=clock)
    bad = msgspec.msgpack.encode([KEEP_HIGH, "b" * 16, None, "gateway"])  # too few fields
    store.receive(b"\x93" + msgspec.msgpack.encode(record(KEEP_HIGH, "a" * 16, error=True)) + bad
                  + msgspec.msgpack.encode(record(KEEP_LOW, "a" * 16)))  # fmt: skip
    clock.now += 5
    assert store.decide_due() == 2
    assert [t.trace_id for t in store.query()] == [KEEP_LOW]
    assert store.stats()["dropped"] == 1


_span_ids = st.integers(0, 2**64 - 1).map(lambda n: f"{n:016x}")


@st.composite
def _traffic(draw: st.DrawFn) -> list[list[tuple[SpanRecord, float]]]:
    """Traces of 1-8 spans (some slow, some with errors, some checkouts), each span with its arrival time."""
    traces = []
    for trace_id in draw(
        st.lists(st.integers(0, 2**128 - 1).map("{:032x}".format), min_size=1, max_size=12, unique=True)
    ):
        route = draw(st.sampled_from([("POST", "/api/orders"), ("GET", "/api/slow"), ("GET", "/api/catalog/products")]))
        root = draw(_span_ids)
        spans = [(record(trace_id, root, route=route, duration_ms=draw(st.floats(0, 80))), draw(st.floats(0, 3)))]
        for _ in range(draw(st.integers(0, 7))):
            span = record(
                trace_id,
                draw(_span_ids),
                parent=root,
                start_ms=draw(st.floats(0, 100)),
                error=draw(st.booleans()),
                route=None,
                attributes=draw(st.sampled_from([{}, {"order.id": "o-1"}, {"n": 1, "ok": True}])),
            )
            spans.append((span, draw(st.floats(0, 3))))
        traces.append(spans)
    return traces


@given(_traffic())
def test_every_trace_is_decided_on_all_its_spans_and_kept_as_it_came(
    traffic: list[list[tuple[SpanRecord, float]]],
) -> None:
    """What the store keeps, and why, is `decide` on each whole trace; a kept trace's spans read back whole."""
    clock = FakeClock(100.0)
    store = TraceStore(POLICY, clock=clock)
    arrivals = sorted(((at, span) for trace in traffic for span, at in trace), key=lambda arrival: arrival[0])
    for at, span in arrivals:  # within 3 s: all in before any trace goes quiet for the 2 s it waits
        clock.now = 100.0 + min(at, 1.9)
        store.add([span])
    clock.now += 5
    store.decide_due()
    by_trace = {trace[0][0].trace_id: [span for span, _ in trace] for trace in traffic}
    expected = {t: decide(POLICY, spans) for t, spans in by_trace.items()}
    kept = {trace.trace_id: trace for trace in store.query(limit=100)}
    assert {t: trace.kept_because for t, trace in kept.items()} == {t: r for t, r in expected.items() if r is not None}
    for trace_id, trace in kept.items():
        sent = [
            (s.span_id, round((s.end_ns - s.start_ns) / 1e6, 3), s.error, sorted(s.attributes.items()))
            for s in by_trace[trace_id]
        ]
        read = [(s.span_id, s.duration_ms, s.status == "error", sorted(s.attributes.items())) for s in trace.spans]
        assert sorted(sent, key=repr) == sorted(read, key=repr)


def test_a_busy_trace_is_decided_at_the_longest_wait() -> None:
    clock = FakeClock(100.0)
    store = TraceStore(POLICY, clock=clock)
    for _ in range(40):
        store.add([record(KEEP_LOW, "a" * 16)])
        clock.now += 1.0
    assert store.stats()["decided"] == 0
    store.decide_due()
    assert store.stats()["decided"] == 1  # 30 s after the first span, though never quiet


def test_late_spans_of_a_dropped_trace_are_dropped_too() -> None:
    clock = FakeClock(100.0)
    store = TraceStore(POLICY, clock=clock)
    store.add([record(KEEP_HIGH, "a" * 16)])
    clock.now += 5
    store.decide_due()
    store.add([record(KEEP_HIGH, "b" * 16, parent="a" * 16, error=True)])
    clock.now += 5
    store.decide_due()
    assert store.stats()["dropped"] == 1
    assert store.stats()["decided"] == 1
    assert store.query() == []


def test_kept_and_pending_traces_are_bounded() -> None:
    clock = FakeClock(100.0)
    store = TraceStore(POLICY, clock=clock, capacity=3, max_pending=5)
    ids = [f"{i:016x}" + "0" * 15 + "1" for i in range(10)]  # every one kept by the base rate
    for trace_id in ids:
        store.add([record(trace_id, "a" * 16)])
    assert store.stats()["pending"] == 5
    clock.now += 5
    store.decide_due()
    assert [t.trace_id for t in store.query()] == ids[:-4:-1]  # the newest three, newest first


def test_filters_errors_and_slow() -> None:
    clock = FakeClock(100.0)
    store = TraceStore(POLICY, clock=clock)
    store.add([record("1" * 32, "a" * 16, error=True)])
    store.add([record("2" * 32, "a" * 16, route=("GET", "/api/slow"), duration_ms=80)])
    store.add([record(KEEP_LOW, "a" * 16)])
    clock.now += 5
    store.decide_due()
    assert [t.trace_id for t in store.query(errors=True)] == ["1" * 32]
    assert [t.trace_id for t in store.query(slow=True)] == ["2" * 32]
    assert len(store.query()) == 3
    assert len(store.query(limit=2)) == 2
