"""Operations over NATS request-reply, served by the same route layer as HTTP.

A service subscribes, for each operation, to `<subject>.<instance id>` (so a client's
balancer, breakers and retries choose the instance exactly as over HTTP) and, in queue
group `<service>`, to `<subject>` (for callers that let NATS pick). A request carries the
method and path in headers, the body as the payload; the reply carries the status in
`meshop-status`. The request is turned into a Starlette `Request` and handed to the very
endpoint the HTTP server uses, so validation, auth and errors are identical.
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
METHOD_HEADER = "meshop-method"
PATH_HEADER = "meshop-path"
_REPLY_HEADERS = ("content-type", "retry-after")

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
                "headers": [
                    (k.lower().encode(), v.encode())
                    for k, v in headers.items()
                    if k not in (PATH_HEADER, METHOD_HEADER)
                ],
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
        reply_headers = {STATUS_HEADER: str(response.status_code)}
        for name in _REPLY_HEADERS:
            if name in response.headers:
                reply_headers[name] = response.headers[name]
        if msg.reply:
            await nc.publish(msg.reply, bytes(response.body), headers=reply_headers)

    return handle
