"""Spans: parents and children across the traceparent, errors, events, and export over NATS."""

from __future__ import annotations

import asyncio
import threading
import uuid
from http.server import BaseHTTPRequestHandler, HTTPServer

import msgspec
import nats
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from meshop.mesh.errors import NotFound, ServiceUnavailable
from meshop.mesh.telemetry import tracecontext, tracing
from meshop.mesh.telemetry.spanrecord import msgpack_array_header
from meshop.mesh.telemetry.tracing import SPANS_SUBJECT, SpanKind, SpanRecord, Tracing

PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def by_name(finished: list[SpanRecord]) -> dict[str, SpanRecord]:
    return {s.name: s for s in finished}


def test_a_span_continues_the_callers_trace_and_parents_what_runs_inside(spans: list[SpanRecord]) -> None:
    with (
        tracecontext.use_traceparent(PARENT),
        tracing.span("POST /orders", SpanKind.SERVER, parent=PARENT),
    ):
        server_tp = tracecontext.current()
        with tracing.span("inventory.reserve", SpanKind.CLIENT):
            client_tp = tracecontext.current()
    found = by_name(spans)
    server, client = found["POST /orders"], found["inventory.reserve"]
    assert server.trace_id == PARENT[3:35] == client.trace_id
    assert server.parent_id == PARENT[36:52]
    assert client.parent_id == server.span_id
    assert (server.kind, client.kind) == ("server", "client")
    assert (server.service, server.instance) == ("orders", "orders-1")
    assert server.start_ns <= client.start_ns <= client.end_ns <= server.end_ns
    # what a call sends is the span's own id, so the callee's span hangs under it
    assert server_tp == f"00-{PARENT[3:35]}-{server.span_id}-01"
    assert client_tp == f"00-{PARENT[3:35]}-{client.span_id}-01"
    assert tracecontext.current() is None  # restored after the blocks


def test_no_parent_starts_a_new_trace(spans: list[SpanRecord]) -> None:
    with tracing.span("GET /api/catalog/products", SpanKind.SERVER, parent="garbage"):
        pass
    [root] = spans
    assert root.parent_id is None
    assert tracecontext.valid(f"00-{root.trace_id}-{root.span_id}-01")


def test_server_failures_are_errors_answers_are_not(spans: list[SpanRecord]) -> None:
    class Declined(Exception):
        pass

    for name, exc in [
        ("crash", RuntimeError("boom")),
        ("503", ServiceUnavailable("down")),
        ("404", NotFound("no such order")),
        ("declined", Declined()),
    ]:
        with pytest.raises(type(exc)), tracing.span(name, answers=(Declined,)):
            raise exc
    assert {n: s.error for n, s in by_name(spans).items()} == {
        "crash": True,
        "503": True,
        "404": False,
        "declined": False,
    }
    assert "boom" in str(by_name(spans)["crash"].attributes["error.message"])


def test_events_and_attributes_go_on_the_current_span(spans: list[SpanRecord]) -> None:
    with tracing.span("call") as span:
        tracing.event("retry", {"attempt": 1, "delay_ms": 12.5})
        tracing.annotate({"order.id": "o-1"})
        tracing.fail(span, "answered 502")
    tracing.event("outside")  # no current span: nothing happens
    [call] = spans
    assert [(name, attrs) for name, _, attrs in call.events] == [("retry", {"attempt": 1, "delay_ms": 12.5})]
    assert call.attributes["order.id"] == "o-1"
    assert call.error
    tracing.annotate({"late": True})  # an ended span is not changed
    assert "late" not in call.attributes


def test_without_a_tracer_calls_still_get_a_child_traceparent() -> None:
    tracing.install(None)
    with tracecontext.use_traceparent(PARENT), tracing.span("call") as span:
        assert span is None
        current = tracecontext.current()
    assert current is not None
    assert current[3:35] == PARENT[3:35]
    assert current[36:52] != PARENT[36:52]


@pytest.mark.integration
async def test_finished_spans_reach_the_span_subject_in_batches(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    received: list[SpanRecord] = []
    got = asyncio.Event()

    async def collect(msg: nats.aio.msg.Msg) -> None:
        received.extend(msgspec.msgpack.decode(msg.data, type=list[SpanRecord]))
        if len(received) >= 3:
            got.set()

    await nc.subscribe(SPANS_SUBJECT, cb=collect)
    tracer = Tracing("payments", f"payments-{uuid.uuid4().hex[:6]}")
    tracer.publish_to(nc)
    tracing.install(tracer)
    try:
        with tracing.span("POST /payments", SpanKind.SERVER, parent=PARENT):
            with tracing.span("provider.authorize", SpanKind.CLIENT):
                tracing.event("try", {"result": 200})
            with pytest.raises(RuntimeError), tracing.span("ledger"):
                raise RuntimeError("disk full")
        await tracer.close()  # publishes what is pending
        await asyncio.wait_for(got.wait(), timeout=5)
    finally:
        tracing.install(None)
        await nc.close()
    records = {r.name: r for r in received}
    assert set(records) == {"POST /payments", "provider.authorize", "ledger"}
    server = records["POST /payments"]
    assert server.trace_id == PARENT[3:35]
    assert server.parent_id == PARENT[36:52]
    assert server.kind == "server"
    assert server.service == "payments"
    assert records["provider.authorize"].parent_id == server.span_id
    assert records["provider.authorize"].events[0][0] == "try"
    assert records["ledger"].error
    assert not server.error
    assert all(r.end_ns >= r.start_ns > 0 for r in received)


def test_with_an_otlp_endpoint_spans_also_go_out_over_otlp_http(monkeypatch: pytest.MonkeyPatch) -> None:
    received: list[bytes] = []

    class Collector(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(self.rfile.read(int(self.headers["content-length"])))
            assert self.path == "/v1/traces"
            self.send_response(200)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *_args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    tracer = Tracing("shipping", "shipping-1")
    tracing.install(tracer)
    try:
        with tracing.span("POST /shipments", SpanKind.SERVER, parent=PARENT):
            pass
        asyncio.run(tracer.close())  # flushes the OTLP batch
    finally:
        tracing.install(None)
        server.shutdown()
        server.server_close()
    request = ExportTraceServiceRequest.FromString(b"".join(received))
    [resource_spans] = request.resource_spans
    resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
    assert resource["service.name"] == "shipping"
    [span] = [s for scope in resource_spans.scope_spans for s in scope.spans]
    assert span.name == "POST /shipments"
    assert span.trace_id.hex() == PARENT[3:35]
    assert span.parent_span_id.hex() == PARENT[36:52]


def test_background_work_and_unsampled_callers_make_no_spans(spans: list[SpanRecord]) -> None:
    with tracing.span("users.jwks", SpanKind.CLIENT, root=False) as span:
        assert span is None
        sent = tracecontext.current()
    assert sent is not None
    assert sent.endswith("-00")  # the callee records nothing either
    with tracing.span("GET /.well-known/jwks.json", SpanKind.SERVER, parent=sent) as span:
        assert span is None
        assert tracecontext.current() is not None
        assert tracecontext.current() != sent
    with tracing.span("GET /.well-known/jwks.json", SpanKind.SERVER, parent=None) as span:  # a root is allowed
        assert span is not None
    assert [s.name for s in spans] == ["GET /.well-known/jwks.json"]


@pytest.mark.parametrize("count", [0, 1, 15, 16, 65535, 65536])
def test_spans_encoded_one_by_one_make_the_msgpack_list_a_batch_is(count: int) -> None:
    """The batcher encodes each span as it ends; header + concatenation must decode as the list."""
    encoder = msgspec.msgpack.Encoder()
    record = SpanRecord(
        PARENT[3:35], "b7ad6b7169203331", None, "s", "i", "n", "server", 1, 2, False, {"k": 1}, [("try", 3, {"x": 1.5})]
    )
    buffer = bytearray()
    for _ in range(count):
        encoder.encode_into(record, buffer, -1)
    batch = msgpack_array_header(count) + buffer
    assert batch == encoder.encode([record] * count)
    assert msgspec.msgpack.decode(batch, type=list[SpanRecord]) == [record] * count
