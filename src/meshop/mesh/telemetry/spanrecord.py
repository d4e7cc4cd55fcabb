"""A span's data: what `tracing` records and exports, and the console decodes.

Kept apart from `tracing` because that module is compiled (docs/decisions/0014) and a
msgspec Struct must stay an interpreted class: mypyc resolves its annotations
differently, and msgspec would then encode and decode it wrongly.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import msgspec

AttributeValue = str | bool | int | float


class SpanRecord(msgspec.Struct, array_like=True, gc=False):
    """One span: recorded in place while it runs, then sent as is (times in ns since the epoch)."""

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

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        self.attributes[key] = value

    def set_attributes(self, attributes: Mapping[str, AttributeValue]) -> None:
        self.attributes.update(attributes)

    def add_event(self, name: str, attributes: Mapping[str, AttributeValue] | None = None) -> None:
        self.events.append((name, time.time_ns(), dict(attributes or {})))

    def is_recording(self) -> bool:
        return self.end_ns == 0


def msgpack_array_header(count: int) -> bytes:
    """The msgpack header of an array of `count` items.

    Before `count` spans encoded one after another, it makes them the array of spans a
    batch on the span stream is: what the batcher publishes and the console keeps of a
    pending trace, without encoding the spans again.
    """
    if count < 16:
        return bytes((0x90 | count,))
    if count < 0x10000:
        return b"\xdc" + count.to_bytes(2, "big")
    return b"\xdd" + count.to_bytes(4, "big")
