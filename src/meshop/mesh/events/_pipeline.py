"""JetStream publishes pipelined on one connection: sent back to back, acknowledged together.

nats-py's `js.publish` is a request: each message waits for its acknowledgement before the
next is sent, one round trip per message. Its `publish_async` pipelines, but in nats-py
2.16 an error acknowledgement (a failed precondition) raises inside its subscription's
callback and leaves the message's future pending forever. So the outbox sends each message
itself, with a reply subject under one subscription of the connection's inbox, and resolves
the message's future from its acknowledgement, errors included.

Messages sent on one connection reach the server in the order they were sent, and a stream
stores what it accepts in the order it receives it.
"""

from __future__ import annotations

import asyncio

import msgspec
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import Header
from nats.js.errors import APIError, NoStreamResponseError

#: The status header of "no responders": no stream listens on the subject.
_NO_RESPONDERS = "503"


class _Error(msgspec.Struct):
    code: int = 0
    err_code: int = 0
    description: str = ""


class _Ack(msgspec.Struct):
    """JetStream's answer to a publish: a stream sequence, or an error."""

    stream: str = ""
    seq: int = 0
    duplicate: bool = False
    error: _Error | None = None


_read_ack = msgspec.json.Decoder(_Ack).decode


class Pipeline:
    """Sends JetStream publishes without waiting; each gives a future of its acknowledgement."""

    def __init__(self, nc: NatsClient) -> None:
        self._nc = nc
        self._prefix = ""
        self._subscription: Subscription | None = None
        self._pending: dict[str, asyncio.Future[_Ack]] = {}
        self._sent = 0

    async def send(self, subject: str, payload: bytes, headers: dict[str, str]) -> asyncio.Future[_Ack]:
        """Publish to JetStream; the future resolves with the acknowledgement or its error.

        Nothing times it out: the caller waits with a deadline and cancels what is left.
        """
        if self._subscription is None:
            self._prefix = self._nc.new_inbox()  # under the connection's inbox prefix, which its user may read
            self._subscription = await self._nc.subscribe(self._prefix + ".*", cb=self._on_ack)
        self._sent += 1
        token = str(self._sent)
        future: asyncio.Future[_Ack] = asyncio.get_running_loop().create_future()
        self._pending[token] = future
        future.add_done_callback(lambda _: self._pending.pop(token, None))  # answered, failed or cancelled
        try:
            await self._nc.publish(subject, payload, reply=f"{self._prefix}.{token}", headers=headers)
        except BaseException:
            future.cancel()
            raise
        return future

    async def _on_ack(self, msg: Msg) -> None:
        future = self._pending.get(msg.subject.rpartition(".")[2])
        if future is None or future.done():  # a late answer to a publish given up on
            return
        if msg.headers and msg.headers.get(Header.STATUS) == _NO_RESPONDERS:
            future.set_exception(NoStreamResponseError())
            return
        try:
            ack = _read_ack(msg.data)
        except msgspec.DecodeError as exc:
            future.set_exception(APIError(description=f"unreadable acknowledgement: {exc}"))
            return
        if ack.error is not None:
            error = ack.error
            future.set_exception(APIError(code=error.code, err_code=error.err_code, description=error.description))
            return
        future.set_result(ack)

    async def close(self) -> None:
        """Stop reading acknowledgements; publishes still waiting for one are cancelled."""
        for future in list(self._pending.values()):
            future.cancel()
        if self._subscription is not None:
            subscription, self._subscription = self._subscription, None
            await subscription.unsubscribe()
