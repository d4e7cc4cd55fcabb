"""Spans: parents and children across the traceparent, errors, events, and export over NATS."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer

import msgspec
import nats
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from meshop.mesh import tracecontext, tracing
from meshop.mesh.errors import NotFound, ServiceUnavailable
from meshop.mesh.tracing import SPANS_SUBJECT, SpanKind, SpanRecord, Tracing

PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tracer = Tracing("orders", "orders-1")
    tracer.provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(tracer)
    yield exporter
    tracing.install(None)


def by_name(exporter: InMemorySpanExporter) -> dict[str, ReadableSpan]:
    return {s.name: s for s in exporter.get_finished_spans()}


def test_a_span_continues_the_callers_trace_and_parents_what_runs_inside(spans: InMemorySpanExporter) -> None:
    with (
        tracecontext.use_traceparent(PARENT),
        tracing.span("POST /orders", SpanKind.SERVER, parent=PARENT),
    ):
        server_tp = tracecontext.current()
        with tracing.span("inventory.reserve", SpanKind.CLIENT):
            client_tp = tracecontext.current()
    found = by_name(spans)
    server, client = found["POST /orders"], found["inventory.reserve"]
    assert server.context is not None
    assert client.context is not None
    assert server.parent is not None
    assert f"{server.context.trace_id:032x}" == PARENT[3:35] == f"{client.context.trace_id:032x}"
    assert f"{server.parent.span_id:016x}" == PARENT[36:52]
    assert client.parent is not None
    assert client.parent.span_id == server.context.span_id
    # what a call sends is the span's own id, so the callee's span hangs under it
    assert server_tp == f"00-{PARENT[3:35]}-{server.context.span_id:016x}-01"
    assert client_tp is not None
    assert client_tp[36:52] == f"{client.context.span_id:016x}"
    assert tracecontext.current() is None  # restored after the blocks


def test_no_parent_starts_a_new_trace(spans: InMemorySpanExporter) -> None:
    with tracing.span("GET /api/catalog/products", SpanKind.SERVER, parent="garbage"):
        pass
    [root] = spans.get_finished_spans()
    assert root.parent is None


def test_server_failures_are_errors_answers_are_not(spans: InMemorySpanExporter) -> None:
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
    status = {n: s.status.status_code for n, s in by_name(spans).items()}
    assert status == {
        "crash": StatusCode.ERROR,
        "503": StatusCode.ERROR,
        "404": StatusCode.UNSET,
        "declined": StatusCode.UNSET,
    }


def test_events_and_attributes_go_on_the_current_span(spans: InMemorySpanExporter) -> None:
    with tracing.span("call") as span:
        tracing.event("retry", {"attempt": 1, "delay_ms": 12.5})
        tracing.annotate({"order.id": "o-1"})
        tracing.fail(span, "answered 502")
    tracing.event("outside")  # no current span: nothing happens
    [call] = spans.get_finished_spans()
    assert [(e.name, dict(e.attributes or {})) for e in call.events] == [("retry", {"attempt": 1, "delay_ms": 12.5})]
    assert call.attributes is not None
    assert call.attributes["order.id"] == "o-1"
    assert call.status.status_code is StatusCode.ERROR


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
        assert tracer.provider.force_flush(5000)
    finally:
        tracing.install(None)
        tracer.provider.shutdown()
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


def test_background_work_and_unsampled_callers_make_no_spans(spans: InMemorySpanExporter) -> None:
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
    assert [s.name for s in spans.get_finished_spans()] == ["GET /.well-known/jwks.json"]
