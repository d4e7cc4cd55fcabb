"""Structured logs: JSON lines in production, readable lines under `meshop up`."""

from __future__ import annotations

import logging
import sys
from typing import Literal

import structlog

from meshop.mesh.telemetry import tracecontext


def configure_logging(
    *, service: str, instance: str, fmt: Literal["json", "console"] = "json", level: str = "info"
) -> None:
    """Route structlog and the standard library's logging to stderr, one event per line."""
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False, pad_event_to=0)
    )
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        _add_trace,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            _bind(service=service, instance=instance),
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("aiosqlite", "nats", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _add_trace(_logger: object, _name: str, event: structlog.typing.EventDict) -> structlog.typing.EventDict:
    """trace_id, span_id and request_id of the work being done, on every line that has them."""
    traceparent = tracecontext.current()
    if traceparent is not None:
        event.setdefault("trace_id", traceparent[3:35])
        event.setdefault("span_id", traceparent[36:52])
    request_id = tracecontext.request_id()
    if request_id is not None:
        event.setdefault("request_id", request_id)
    return event


def _bind(**fields: str) -> structlog.typing.Processor:
    def processor(_logger: object, _name: str, event: structlog.typing.EventDict) -> structlog.typing.EventDict:
        for key, value in fields.items():
            event.setdefault(key, value)
        return event

    return processor
