"""`meshop events`: read the event streams and the dead-letter stream of a running shop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import msgspec
from nats.aio.msg import Msg
from nats.js.errors import NotFoundError

from meshop.contracts import SERVICES
from meshop.mesh.events.consumer import DLQ_STREAM
from meshop.mesh.events.envelope import Event
from meshop.mesh.events.outbox import event_stream
from meshop.mesh.security.nats_auth import NatsLogin
from meshop.runtime.connection import NoShopError, connected
from meshop.runtime.connection import login_of as login_of  # the CLI's
from meshop.runtime.connection import nats_url_of as nats_url_of  # where the CLI and tests find it


def _newest(first: int, last: int, messages: int, count: int) -> range:
    """The sequence numbers of a stream's newest `count` messages (none when it is empty)."""
    if not messages:
        return range(0)
    return range(max(first, last - count + 1, 1), last + 1)


def describe(msg: Msg) -> dict[str, Any]:
    """One event message as a flat record (undecodable payloads shown raw)."""
    record: dict[str, Any] = {"subject": msg.subject}
    try:
        event = msgspec.json.decode(msg.data, type=Event)
    except msgspec.DecodeError:
        return {**record, "raw": msg.data[:200].decode(errors="replace")}
    at = datetime.fromtimestamp(event.occurred_at, UTC).isoformat(timespec="milliseconds")
    return {
        **record,
        "id": event.id,
        "type": event.type,
        "occurred_at": at,
        "data": event.data,
        "traceparent": event.traceparent,
    }


async def last_events(
    url: str, *, services: list[str] | None = None, count: int = 20, login: NatsLogin | None = None
) -> list[dict[str, Any]]:
    """The newest `count` events over the given services' streams, oldest first."""
    found: list[tuple[str, dict[str, Any]]] = []
    async with connected(url, name="meshop-events", login=login) as nc:
        js = nc.jetstream()
        for service in services or list(SERVICES):
            try:
                state = (await js.stream_info(event_stream(service))).state
            except NotFoundError:
                continue
            for seq in _newest(state.first_seq, state.last_seq, state.messages, count):
                with contextlib.suppress(NotFoundError):
                    raw = await js.get_msg(event_stream(service), seq)
                    record = describe(Msg(nc, subject=raw.subject or "", data=raw.data or b""))
                    found.append((record.get("id", ""), record))
    found.sort(key=lambda pair: pair[0])  # event ids sort by creation time
    return [record for _, record in found[-count:]]


async def follow(
    url: str, *, services: list[str] | None = None, seconds: float | None = None, login: NatsLogin | None = None
) -> AsyncIterator[dict[str, Any]]:
    """Events as they are published (core NATS subscription; nothing is acknowledged).

    Raises NoShopError when the shop stops meanwhile, rather than waiting for it forever.
    """
    queue: asyncio.Queue[Msg | None] = asyncio.Queue()  # None: the connection closed

    async def closed() -> None:
        queue.put_nowait(None)

    async with connected(url, name="meshop-events", login=login, closed_cb=closed) as nc:
        for subject in [f"meshop.events.{s}.>" for s in services] if services else ["meshop.events.>"]:
            await nc.subscribe(subject, cb=queue.put)
        loop = asyncio.get_running_loop()
        end = None if seconds is None else loop.time() + seconds
        while end is None or loop.time() < end:
            try:
                msg = await asyncio.wait_for(queue.get(), None if end is None else max(0.0, end - loop.time()))
            except TimeoutError:
                return
            if msg is None:
                raise NoShopError(f"the shop at {url} stopped")
            yield describe(msg)


async def dead_letters(url: str, *, count: int = 50, login: NatsLogin | None = None) -> list[dict[str, Any]]:
    """The newest `count` messages of the dead-letter stream, with why each is there."""
    records = []
    async with connected(url, name="meshop-events", login=login) as nc:
        js = nc.jetstream()
        try:
            state = (await js.stream_info(DLQ_STREAM)).state
        except NotFoundError:
            return []
        for seq in _newest(state.first_seq, state.last_seq, state.messages, count):
            with contextlib.suppress(NotFoundError):
                raw = await js.get_msg(DLQ_STREAM, seq)
                headers = raw.headers or {}
                record = describe(Msg(nc, subject=headers.get("meshop-original-subject", ""), data=raw.data or b""))
                records.append(
                    {
                        **record,
                        "consumer": headers.get("meshop-consumer"),
                        "deliveries": int(headers.get("meshop-deliveries", "0")),
                        "error": headers.get("meshop-error"),
                        "stream_sequence": int(headers.get("meshop-stream-sequence", "0")),
                    }
                )
    return records


async def dead_letter_summary(url: str, *, login: NatsLogin | None = None) -> str:
    """Why `meshop events dlq` printed nothing: the dead-letter stream's state, and the consumers that write to it."""
    async with connected(url, name="meshop-events", login=login) as nc:
        js = nc.jetstream()
        consumers: list[str] = []
        for service in SERVICES:
            with contextlib.suppress(NotFoundError):  # a service that has published nothing has no stream
                infos = await js.consumers_info(event_stream(service))
                consumers += [info.name for info in infos if info.config.durable_name]  # not a replay's
        try:
            await js.stream_info(DLQ_STREAM)
            stream = f"stream {DLQ_STREAM} is empty"
        except NotFoundError:
            stream = f"no stream {DLQ_STREAM} yet"
    writers = ", ".join(sorted(consumers)) or "none"
    return f"no dead-lettered events ({stream}; consumers that would put events there: {writers})"
