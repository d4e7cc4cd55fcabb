"""Operations over NATS request-reply, served by the same route layer as HTTP.

A service subscribes, for each operation, to `<subject>.<instance id>` (so a client's
balancer, breakers and retries choose the instance exactly as over HTTP) and, in queue
group `<service>`, to `<subject>` (for callers that let NATS pick). The subject names the
operation, so its method; a request carries its path in `meshop-path` only when it is not
the operation's own (path parameters, a query), the body as the payload. A reply carries
its status in `meshop-status` and its content type, unless it is the common answer: a reply
without headers is a 200 with a JSON body (or none). nats-py encodes and parses headers in
Python, so every header left off is time off every call (decision 0026).

The mesh client packs what it sends with every try -- the deadline, the traceparent, its
service identity and the path -- into one header, `meshop-call: d=<ms> t=<traceparent>
i=<identity> p=<path>` (`request_headers`; decision 0040). A server reads either that or
the fields as their own headers (`meshop-deadline-ms`, `traceparent`, `meshop-identity`,
`meshop-path`), which is what a raw NATS client sends. The request is handed, as an
`Incoming`, to the very endpoint the HTTP server uses, so validation, auth and errors are
identical.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Final
from urllib.parse import unquote

import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from starlette.responses import Response

from meshop.mesh.api.operation import Operation
from meshop.mesh.api.routing import Api, Endpoint, Incoming, Reply, problem_response
from meshop.mesh.errors import NotFound, TransportError
from meshop.mesh.headers import CALL_HEADER, DEADLINE_HEADER, IDENTITY_HEADER, PATH_HEADER, STATUS_HEADER
from meshop.mesh.registry.base import Instance
from meshop.mesh.telemetry import tracecontext
from meshop.mesh.transport.exchange import Exchange, Request
from meshop.mesh.transport.exchange import Reply as TryReply

_JSON = "application/json"
#: The fields a mesh request packs into `meshop-call`, by the tag that names each there.
_PACKED: Final = {DEADLINE_HEADER: "d", tracecontext.HEADER: "t", IDENTITY_HEADER: "i", PATH_HEADER: "p"}
_UNPACKED: Final = {tag: name for name, tag in _PACKED.items()}


def instance_subject(op: Operation[Any, Any], instance_id: str) -> str:
    return f"{op.subject}.{instance_id}"


async def serve(nc: NatsClient, api: Api, instance_id: str) -> list[Subscription]:
    """Subscribe every operation of `api`; returns the subscriptions (to drain at stop)."""
    subscriptions = []
    for op, endpoint in api.endpoints().items():
        handler = _handler(nc, op, endpoint)
        subscriptions.append(await nc.subscribe(instance_subject(op, instance_id), cb=handler))
        subscriptions.append(await nc.subscribe(op.subject, queue=api.service, cb=handler))
    return subscriptions


def _handler(nc: NatsClient, op: Operation[Any, Any], endpoint: Endpoint) -> Callable[[Msg], Awaitable[None]]:
    has_params = bool(op.path_params)  # else its own path needs no match

    async def handle(msg: Msg) -> None:
        headers = {k.lower(): v for k, v in msg.headers.items()} if msg.headers else {}
        packed = headers.pop(CALL_HEADER, None)
        if packed is not None:
            unpack(packed, headers)
        target = headers.pop(PATH_HEADER, None)
        params: dict[str, str] | None
        if target is None:
            path, query = op.path, ""
            params = op.match(path) if has_params else {}
        else:
            path, _, query = target.partition("?")
            path = unquote(path)  # as an HTTP server decodes it
            params = op.match(path)
        response: Reply | Response
        if params is None:
            response = problem_response(NotFound(f"path {path!r} does not match {op.qualified}"), instance=path)
        else:
            incoming = Incoming(headers, path, params, method=op.method, query=query, body=msg.data)
            response = await endpoint(incoming)  # it answers every error itself
        if msg.reply:
            await nc.publish(msg.reply, bytes(response.body), headers=reply_headers(response))

    return handle


def request_headers(headers: dict[str, str], path: str | None) -> dict[str, str] | None:
    """The NATS headers of a try the chain made `headers` for (and `path`, when the request
    must name it): the mesh's own fields in one `meshop-call` header, the others as they are.

    Leaves out `content-type`: a NATS request's body is JSON by its operation's contract,
    and the endpoint does not read it. A field whose value holds a space (none the mesh
    makes) keeps its own header.
    """
    sent: dict[str, str] = {}
    packed: list[str] = []
    for name, value in headers.items():
        tag = _PACKED.get(name)
        if tag is not None and " " not in value:
            packed.append(f"{tag}={value}")
        elif name != "content-type":
            sent[name] = value
    if path is not None:
        if " " in path:
            sent[PATH_HEADER] = path
        else:
            packed.append(f"p={path}")
    if packed:
        sent[CALL_HEADER] = " ".join(packed)
    return sent or None


def unpack(packed: str, headers: dict[str, str]) -> None:
    """Set in `headers` the fields a `meshop-call` value carries (each `<tag>=<value>`, space
    separated), under their own header names; a part with no known tag is ignored."""
    for part in packed.split(" "):
        if len(part) > 1 and part[1] == "=":
            name = _UNPACKED.get(part[0])
            if name is not None:
                headers[name] = part[2:]


def reply_headers(response: Reply | Response) -> dict[str, str] | None:
    """The headers of the NATS reply that carries `response`: None for a 200 with a JSON body or none."""
    status = response.status_code
    if isinstance(response, Reply):  # a handler's result: JSON or no body
        if status == 200:
            return None
        return {STATUS_HEADER: str(status), "content-type": _JSON} if response.body else {STATUS_HEADER: str(status)}
    content_type = retry_after = None
    for name, value in response.raw_headers:  # (not `.headers`: a wrapper made per call)
        if name == b"content-type":
            content_type = value.decode("latin-1")
        elif name == b"retry-after":
            retry_after = value.decode("latin-1")
    if (
        status == 200
        and retry_after is None
        and (content_type == _JSON or (content_type is None and not response.body))
    ):
        return None
    sent = {STATUS_HEADER: str(status)}
    if content_type is not None:
        sent["content-type"] = content_type
    if retry_after is not None:
        sent["retry-after"] = retry_after
    return sent


def answer_of(msg: Msg) -> tuple[int, dict[str, str]]:
    """A NATS reply's status and headers (names in lower case), as `reply_headers` encoded them."""
    if not msg.headers:
        return 200, {STATUS_HEADER: "200", "content-type": _JSON} if msg.data else {STATUS_HEADER: "200"}
    headers = {k.lower(): v for k, v in msg.headers.items()}
    status = headers.get(STATUS_HEADER)
    return (int(status) if status is not None and status.isdigit() else 502), headers


#: nats-server's answer to a request that no subscription can take (status only, no body).
_NO_RESPONDERS = "503"


class Requests:
    """Request-reply over one wildcard inbox subscription, the mesh's own.

    What nats-py's `request()` does, without what it pays per request: a token from
    `os.urandom` and a NUID (here, a counter under the connection's unique inbox), a
    done-callback closure and `asyncio.wait_for`'s waiter (here, one timer). The replies
    arrive through one subscription, made at the first request.
    """

    __slots__ = ("_count", "_nc", "_pending", "_prefix", "_subscribed")

    def __init__(self, nc: NatsClient) -> None:
        self._nc = nc
        self._prefix = ""
        self._count = 0
        self._pending: dict[str, asyncio.Future[Msg]] = {}
        self._subscribed: asyncio.Future[None] | None = None

    async def request(self, subject: str, payload: bytes, *, headers: dict[str, str] | None, timeout_s: float) -> Msg:
        """The reply; `nats.errors.TimeoutError` after `timeout_s`, `NoRespondersError` when
        nobody listens on `subject`."""
        if self._subscribed is None or not self._subscribed.done():
            await self._subscribe()
        self._count += 1
        token = str(self._count)
        loop = asyncio.get_running_loop()
        reply: asyncio.Future[Msg] = loop.create_future()
        self._pending[token] = reply
        timer = loop.call_later(timeout_s, _expire, reply)
        try:
            await self._nc.publish(subject, payload, reply=self._prefix + token, headers=headers or None)
            msg = await reply
        finally:
            timer.cancel()
            del self._pending[token]
        if not msg.data and msg.headers and msg.headers.get("Status") == _NO_RESPONDERS:
            raise nats.errors.NoRespondersError
        return msg

    async def _subscribe(self) -> None:
        if self._subscribed is None:  # the first request subscribes; the others wait for it
            self._subscribed = asyncio.get_running_loop().create_future()
            try:
                prefix = self._nc.new_inbox() + "."
                await self._nc.subscribe(prefix + "*", cb=self._answer)
            except BaseException as exc:
                self._subscribed.set_exception(exc)
                self._subscribed.exception()  # retrieved: the waiters, if any, get it too
                self._subscribed = None
                raise
            self._prefix = prefix
            self._subscribed.set_result(None)
        else:
            await asyncio.shield(self._subscribed)

    async def _answer(self, msg: Msg) -> None:
        reply = self._pending.get(msg.subject[len(self._prefix) :])
        if reply is not None and not reply.done():  # else: too late, its caller gave up
            reply.set_result(msg)


def _expire(reply: asyncio.Future[Msg]) -> None:
    if not reply.done():
        reply.set_exception(nats.errors.TimeoutError())


class NatsExchange(Exchange):
    """The mesh client's `Exchange` over NATS: each try is a request to the chosen
    instance's own subject of the operation (`<subject>.<instance id>`)."""

    __slots__ = ("_requests",)

    def __init__(self, nc: NatsClient) -> None:
        self._requests: Final = Requests(nc)

    async def exchange(
        self, instance: Instance, request: Request, headers: dict[str, str], timeout_s: float
    ) -> TryReply:
        subject = request.subject
        assert subject is not None, "a NATS try needs its operation's subject"
        try:
            msg = await self._requests.request(
                f"{subject}.{instance.instance_id}",
                request.body or b"",
                headers=request_headers(headers, request.nats_path),
                timeout_s=timeout_s,
            )
        except nats.errors.NoRespondersError:
            raise TransportError(f"{instance.service} {instance.instance_id} does not listen on NATS") from None
        except nats.errors.TimeoutError:
            raise TransportError(
                f"{instance.service} did not answer over NATS within {timeout_s:.3f}s", sent=True
            ) from None
        except nats.errors.Error as exc:
            raise TransportError(f"NATS request to {instance.service} failed: {exc}", sent=True) from exc
        status, headers = answer_of(msg)
        return TryReply(status, headers, msg.data)

    # `send`: the default, False: a NATS request is awaited (nats-py publishes from a coroutine).
    # `close`: the default: the NATS connection is the process's.
