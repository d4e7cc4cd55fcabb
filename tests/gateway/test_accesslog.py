"""The access log: one JSON line per request, in batches, in the shape of the other logs."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime

import pytest

from meshop.gateway.accesslog import AccessLog


def test_lines_are_json_with_the_service_fields_and_written_in_batches() -> None:
    stream = io.BytesIO()
    log = AccessLog(service="gateway", instance="g1", stream=stream, batch=3)
    for n in range(2):
        log.write(method="GET", path=f"/api/x/{n}", status=200, duration_ms=1.5, request_id=f"r{n}")
    assert stream.getvalue() == b""  # not yet: a batch is 3
    log.write(method="POST", path="/api/y", status=429, duration_ms=0.2, request_id="r2")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["path"] for line in lines] == ["/api/x/0", "/api/x/1", "/api/y"]
    assert lines[2]["status"] == 429
    assert {k: lines[0][k] for k in ("event", "level", "service", "instance")} == {
        "event": "access",
        "level": "info",
        "service": "gateway",
        "instance": "g1",
    }
    assert lines[0]["timestamp"].endswith("+00:00")


def test_console_lines_are_readable_and_flush_writes_what_is_left() -> None:
    stream = io.BytesIO()
    log = AccessLog(service="gateway", instance="g1", fmt="console", stream=stream)
    log.write(method="GET", path="/api/catalog/products", status=200, duration_ms=0.9, request_id="abc")
    log.flush()
    assert stream.getvalue().decode().endswith("[access ] GET /api/catalog/products 200 0.9ms request_id=abc\n")


@pytest.mark.parametrize("at", [1_700_000_000.0, 1_700_000_000.5, 1_700_000_000.125, 1_700_000_001.25])
def test_a_lines_timestamp_is_the_iso_time_it_was_written_at(at: float) -> None:
    stream = io.BytesIO()
    log = AccessLog(service="gateway", instance="g1", stream=stream, clock=lambda: at)
    log.write(method="GET", path="/", status=200, duration_ms=0.1, request_id="r")
    log.flush()
    assert json.loads(stream.getvalue())["timestamp"] == datetime.fromtimestamp(at, UTC).isoformat()
