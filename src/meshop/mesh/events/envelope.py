"""What an event is: the envelope on the wire, and the typed `EventType` contracts declare.

An `EventType` is to events what an `Operation` is to calls: a contract's value naming
who emits it (`source`), what it is called (`name`), the msgspec Struct its data is, and
the schema version of that Struct. Producers build the Struct and `emit` it; consumers
list the EventTypes they read and get each event's `data` decoded into that Struct.

The wire format is the envelope alone, JSON, with `data` an object: an EventType changes
nothing on the wire, so rows written and messages published before it still decode.
Importing this module loads msgspec only (contracts import it, and so does every process).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import KW_ONLY, dataclass
from typing import Any, Generic, TypeVar

import msgspec

D = TypeVar("D")
S = TypeVar("S", bound=msgspec.Struct)


class Event(msgspec.Struct, Generic[D], kw_only=True):
    """The envelope of every event: what happened, when, to what, with which schema.

    Decoded as bare `Event`, `data` is the JSON object as a dict (what tools that read any
    event use); a consumer hands its handlers `Event[<the EventType's Struct>]`.
    """

    id: str
    type: str
    schema_version: int
    occurred_at: float
    data: D
    traceparent: str | None = None


@dataclass(frozen=True, slots=True)
class EventType(Generic[S]):
    """One kind of event: `source` emits it as `name`, its data a `data` Struct.

    `schema_version` is written in every envelope; a consumer that reads another version
    dead-letters the event rather than guess (a breaking change is a new version, and its
    consumers are changed with it).
    """

    source: str
    name: str
    data: type[S]
    _: KW_ONLY
    schema_version: int = 1

    @property
    def subject(self) -> str:
        """The NATS subject its events are published on (`meshop.events.<source>.<name>`)."""
        return f"meshop.events.{self.source}.{self.name}"


def event_id() -> str:
    """Time-ordered ids (sortable by creation), unique across processes."""
    return f"{time.time_ns():020d}-{uuid.uuid4().hex[:12]}"


class UnreadableEvent(ValueError):
    """An event this consumer cannot read: its data does not decode, or not in this version."""


class Reader:
    """Decodes events of the given types into typed envelopes (what a consumer runs first)."""

    def __init__(self, types: list[EventType[Any]]) -> None:
        self._types = {t.name: t for t in types}
        self._decoders = {t.name: msgspec.json.Decoder(t.data) for t in types}

    def read(self, payload: bytes) -> Event[Any]:
        """The envelope in `payload` with its data as its EventType's Struct.

        Raises `UnreadableEvent` for an envelope that does not decode, an unknown type, a
        schema version other than the EventType's, or data that does not decode into it.
        """
        try:
            raw = msgspec.json.decode(payload, type=Event[msgspec.Raw])
        except msgspec.DecodeError as exc:
            raise UnreadableEvent(f"undecodable event: {exc}") from None
        kind = self._types.get(raw.type)
        if kind is None:
            raise UnreadableEvent(f"event {raw.id} is a {raw.type}, which this consumer does not read")
        if raw.schema_version != kind.schema_version:
            raise UnreadableEvent(
                f"event {raw.id} is {raw.type} schema version {raw.schema_version}; "
                f"this consumer reads version {kind.schema_version}"
            )
        try:
            data = self._decoders[raw.type].decode(raw.data)
        except msgspec.DecodeError as exc:  # ValidationError included
            raise UnreadableEvent(f"event {raw.id}: {raw.type} data does not decode: {exc}") from None
        return Event(
            id=raw.id,
            type=raw.type,
            schema_version=raw.schema_version,
            occurred_at=raw.occurred_at,
            data=data,
            traceparent=raw.traceparent,
        )
