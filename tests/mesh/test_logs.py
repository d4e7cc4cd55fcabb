"""Every log line carries the trace and request it belongs to."""

from __future__ import annotations

import json
import logging

import pytest
import structlog

from meshop.mesh.telemetry import tracecontext
from meshop.mesh.telemetry.logs import configure_logging


def test_log_lines_carry_trace_span_and_request_ids(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        configure_logging(service="orders", instance="o1", fmt="json")
        traceparent = tracecontext.start()
        with tracecontext.use_traceparent(traceparent):
            tracecontext.set_request_id("req-7")
            structlog.get_logger("t").info("step done", step="reserve")
        tracecontext.set_request_id(None)
        structlog.get_logger("t").info("outside any request")
        first, second = (json.loads(line) for line in capsys.readouterr().err.splitlines()[-2:])
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        structlog.reset_defaults()
    assert first["trace_id"] == traceparent[3:35]
    assert first["span_id"] == traceparent[36:52]
    assert first["request_id"] == "req-7"
    assert (first["service"], first["instance"], first["step"]) == ("orders", "o1", "reserve")
    assert "trace_id" not in second
    assert "request_id" not in second
