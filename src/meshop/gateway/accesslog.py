"""The gateway's access log: one line per request, cheap enough to leave on.

Going through the standard logging stack costs a LogRecord, a lock and a formatter chain
per line (tens of microseconds); an access log needs none of it. Lines are encoded with
msgspec and written to stderr in batches (every 100 ms, or at 256 lines), in the same
JSON shape as the process's other log lines, or a readable one under `meshop up`.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import BinaryIO, Literal

import msgspec

_encode = msgspec.json.Encoder().encode


class _Line(msgspec.Struct):
    """One request's fields, in the line's order: a Struct encodes with its keys pre-encoded."""

    method: str
    path: str
    status: int
    duration_ms: float
    request_id: str
    trace_id: str | None
    user_id: str | None
    client: str | None
    upstream: str | None
    cache: str | None
    timestamp: str


class AccessLog:
    def __init__(
        self,
        *,
        service: str,
        instance: str,
        fmt: Literal["json", "console"] = "json",
        stream: BinaryIO | None = None,
        batch: int = 256,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._clock = clock
        self._stream = stream if stream is not None else sys.stderr.buffer
        # The fields every line shares, encoded once: `{"level":...,"instance":"...",`
        shared = {"level": "info", "event": "access", "service": service, "instance": instance}
        self._prefix = _encode(shared)[:-1] + b","
        self._console = fmt == "console"
        self._lines: list[bytes] = []
        self._batch = batch
        self._second = -1
        self._second_text = ""

    def write(
        self,
        *,
        method: str,
        path: str,
        status: int,
        duration_ms: float,
        request_id: str,
        trace_id: str | None = None,
        user_id: str | None = None,
        client: str | None = None,
        upstream: str | None = None,
        cache: str | None = None,
    ) -> None:
        if self._console:
            line = (
                f"{datetime.now(UTC):%Y-%m-%dT%H:%M:%S}Z [access ] {method} {path}"
                f" {status} {duration_ms}ms request_id={request_id}\n"
            ).encode()
        else:
            fields = _Line(
                method,
                path,
                status,
                duration_ms,
                request_id,
                trace_id,
                user_id,
                client,
                upstream,
                cache,
                self._timestamp(),
            )
            line = self._prefix + _encode(fields)[1:] + b"\n"
        self._lines.append(line)
        if len(self._lines) >= self._batch:
            self.flush()

    def _timestamp(self) -> str:
        """`datetime.now(UTC).isoformat()`, its seconds formatted once a second."""
        now = self._clock()
        second = int(now)
        if second != self._second:
            self._second = second
            self._second_text = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        micro = int((now - second) * 1_000_000)
        if not micro:
            return self._second_text + "+00:00"
        # six digits by a leading 1 dropped: a format spec is a generic format() call when compiled
        return f"{self._second_text}.{str(1_000_000 + micro)[1:]}+00:00"

    def flush(self) -> None:
        if self._lines:
            lines, self._lines = self._lines, []
            self._stream.write(b"".join(lines))
            self._stream.flush()

    async def run(self, interval_s: float = 0.1) -> None:
        """Flush every `interval_s` until cancelled (then once more)."""
        try:
            while True:
                await asyncio.sleep(interval_s)
                self.flush()
        finally:
            self.flush()
