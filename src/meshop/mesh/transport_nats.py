"""Operations over NATS request-reply, served by the same route layer as HTTP.

A service subscribes, for each operation, to `<subject>.<instance id>` (so a client's
balancer, breakers and retries choose the instance exactly as over HTTP) and, in queue
group `<service>`, to `<subject>` (for callers that let NATS pick). The subject names the
operation, so its method; a request carries its path in `meshop-path` only when it is not
the operation's own (path parameters, a query), the body as the payload. A reply carries
its status in `meshop-status` and its content type, unless it is the common answer: a reply
without headers is a 200 with a JSON body (or none). nats-py encodes and parses headers in
Python, so every header left off is time off every call (decision 0026). The request is
turned into a Starlette `Request` and handed to the very endpoint the HTTP server uses, so
validation, auth and errors are identical.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import unquote, urlsplit

import structlog
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from starlette.requests import Request
from starlette.responses import Response

from meshop.mesh.errors import InternalError, NotFound, ProblemError
from meshop.mesh.operation import Operation
from meshop.mesh.routing import Api, problem_response

log = structlog.get_logger("meshop.transport.nats")

STATUS_HEADER = "meshop-status"
PATH_HEADER = "meshop-path"
_REPLY_HEADERS = ("content-type", "retry-after")
_JSON = "application/json"

Endpoint = Callable[[Request], Awaitable[Response]]


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
    async def handle(msg: Msg) -> None:
        headers: Mapping[str, str] = msg.headers or {}
        target = urlsplit(headers.get(PATH_HEADER, op.path))
        path = unquote(target.path)  # as an HTTP server decodes it
        params = op.match(path)
        try:
            if params is None:
                raise NotFound(f"path {path!r} does not match {op.qualified}")
            scope = {
                "type": "http",
                "http_version": "1.1",
                "method": op.method,
                "scheme": "nats",
                "path": path,
                "raw_path": target.path.encode(),
                "query_string": target.query.encode(),
                "root_path": "",
                "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items() if k != PATH_HEADER],
                "client": ("nats", 0),
                "server": None,
                "path_params": params,
            }
            body = msg.data

            async def receive() -> dict[str, Any]:
                return {"type": "http.request", "body": body, "more_body": False}

            response = await endpoint(Request(scope, receive))
        except ProblemError as exc:
            response = problem_response(exc, instance=path)
        except Exception as exc:  # the endpoint itself never raises; this is a bad request
            log.warning("bad NATS request", subject=msg.subject, error=repr(exc))
            response = problem_response(InternalError("malformed NATS request"))
        if msg.reply:
            await nc.publish(msg.reply, bytes(response.body), headers=reply_headers(response))

    return handle


def reply_headers(response: Response) -> dict[str, str] | None:
    """The headers of the NATS reply that carries `response`: None for a 200 with a JSON body or none."""
    status, headers = response.status_code, response.headers
    content_type = headers.get("content-type")
    plain = content_type == _JSON or (content_type is None and not response.body)
    if status == 200 and plain and "retry-after" not in headers:
        return None
    sent = {STATUS_HEADER: str(status)}
    for name in _REPLY_HEADERS:
        if name in headers:
            sent[name] = headers[name]
    return sent


def answer_of(msg: Msg) -> tuple[int, dict[str, str]]:
    """A NATS reply's status and headers (names in lower case), as `reply_headers` encoded them."""
    if not msg.headers:
        return 200, {STATUS_HEADER: "200", "content-type": _JSON} if msg.data else {STATUS_HEADER: "200"}
    headers = {k.lower(): v for k, v in msg.headers.items()}
    status = headers.get(STATUS_HEADER)
    return (int(status) if status is not None and status.isdigit() else 502), headers
