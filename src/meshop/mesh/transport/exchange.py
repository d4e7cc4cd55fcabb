"""One try of a call on one chosen instance, whatever carries it: the interface of both transports.

The mesh client's chain (balancing, breakers, retries, deadlines) decides which instance a
try goes to and whether another follows; an `Exchange` only carries the try there and its
answer back. Two implement it: `http_client.HttpExchange` (keep-alive connections) and
`nats.NatsExchange` (request-reply to the instance's own subject). A test may give the
client its own (`meshop.mesh.testing`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from mypy_extensions import mypyc_attr

from meshop.mesh.errors import TransportError
from meshop.mesh.registry.base import Instance


class Request:
    """What every try of one call sends: where the instance serves it and the body.

    `subject` (the operation's NATS subject) is what a NATS exchange sends to; `nats_path`
    the path it names in a header, None when it is the operation's own (`route`). A plain
    class, not a dataclass: compiled (decision 0014), its `__init__` is native code.
    """

    __slots__ = ("body", "method", "nats_path", "path", "subject")

    def __init__(
        self, method: str, path: str, body: bytes | None, *, subject: str | None = None, route: str | None = None
    ) -> None:
        self.method: Final = method
        self.path: Final = path
        self.body: Final = body
        self.subject: Final = subject
        self.nats_path: Final = None if path == route else path


class Reply:
    """An instance's answer to one try, as either transport carries it back."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        #: Header names in lower case; repeated headers joined with ", ".
        self.headers = headers
        self.body = body


#: Who hears of a try sent by `Exchange.send`: its reply, or the exchange's own failure.
Answered = Callable[[Reply | Exception], None]


@mypyc_attr(allow_interpreted_subclasses=True)
class Exchange:
    """Carries one try to an instance and its answer back: the base of every transport.

    A base class, not a Protocol: compiled, a call through it is a native method call,
    where a Protocol's is a Python attribute lookup and call (decision 0030). A test's
    exchange, interpreted, may subclass it too.
    """

    async def exchange(self, instance: Instance, request: Request, headers: dict[str, str], timeout_s: float) -> Reply:
        """The instance's reply, whatever its status; `TransportError` when none came
        (`sent` False only when the request cannot have reached the instance)."""
        raise NotImplementedError

    def send(
        self, instance: Instance, request: Request, headers: dict[str, str], timeout_s: float, done: Answered
    ) -> bool:
        """Send the try now, without a coroutine, if nothing must be waited for first: `done`
        gets the reply or a failure for `failure` to translate. False (the default): nothing
        was sent, and `exchange` must carry it."""
        return False

    def failure(self, instance: Instance, exc: Exception, timeout_s: float) -> TransportError:
        """A failure `send` handed to `done`, as the chain sees it."""
        return TransportError(f"{instance.service} {instance.instance_id}: {exc}", sent=True)

    async def close(self) -> None:
        """Release what the exchange holds (nothing, by default)."""
