"""W3C trace context (`traceparent`) carried through requests, calls, events and sagas.

The gateway starts a trace or continues the caller's; every service handler runs with
the incoming `traceparent` as the current one; the mesh client sends a child of it on
each call (HTTP or NATS); `emit` stores it in the event, and a consumer applies the
event under it; a saga keeps the one it was started under. So one checkout's requests,
steps and events share one trace id. (Spans themselves are the tracing layer's job.)
"""

from __future__ import annotations

import contextlib
import random
import re
from collections.abc import Iterator
from contextvars import ContextVar, Token
from typing import Final

HEADER: Final = "traceparent"
_FORMAT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
_current: ContextVar[str | None] = ContextVar("meshop_traceparent", default=None)
_request_id: ContextVar[str | None] = ContextVar("meshop_request_id", default=None)
#: Ids need uniqueness, not secrecy (OpenTelemetry's SDK does the same): no system call per id.
_bits = random.getrandbits
_ZERO_TRACE, _ZERO_SPAN = "0" * 32, "0" * 16


def valid(value: str | None) -> bool:
    """A version-00 traceparent with a non-zero trace id and parent id."""
    if not value or len(value) != 55:
        return False
    match = _FORMAT.match(value)
    return match is not None and match[1] != _ZERO_TRACE and match[2] != _ZERO_SPAN


def trace_id(value: str | None) -> str | None:
    return value[3:35] if valid(value) and value is not None else None


def new_ids() -> tuple[str, str]:
    """A new trace id and span id, from one random draw (hex: ~3x cheaper than f"{n:032x}")."""
    ids = _bits(192).to_bytes(24, "big").hex()
    trace, span = ids[:32], ids[32:]
    if trace == _ZERO_TRACE or span == _ZERO_SPAN:  # invalid ids (a chance in 2**64): draw again
        return new_ids()
    return trace, span


def span_id() -> str:
    """A new span id (never zero)."""
    return (_bits(64) or 1).to_bytes(8, "big").hex()


def start(sampled: bool = True) -> str:
    """A new trace."""
    trace, span = new_ids()
    return f"00-{trace}-{span}-{'01' if sampled else '00'}"


def child(parent: str | None) -> str:
    """The traceparent of a new span under `parent` (a new trace if it is absent or invalid)."""
    if parent is None or not valid(parent):
        return start()
    return f"{parent[:35]}-{span_id()}-{parent[53:55]}"


def current() -> str | None:
    return _current.get()


@contextlib.contextmanager
def use_traceparent(value: str | None) -> Iterator[None]:
    """Make `value` the current trace context for the block (an invalid one is ignored)."""
    token = _current.set(value if valid(value) else None)
    try:
        yield
    finally:
        _current.reset(token)


def enter(value: str) -> Token[str | None]:
    """Make `value` (already valid: a span's own) current until `leave(token)`; no checks, no generator."""
    return _current.set(value)


def leave(token: Token[str | None]) -> None:
    _current.reset(token)


def set_current(value: str | None) -> None:
    """Set the current trace context for the rest of this task (a request's handler)."""
    _current.set(value if valid(value) else None)


def request_id() -> str | None:
    """The `X-Request-Id` of the request being served (set by the route layer and the gateway)."""
    return _request_id.get()


def set_request_id(value: str | None) -> None:
    _request_id.set(value[:128] if value else None)
