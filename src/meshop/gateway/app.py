"""The gateway process: route, authenticate and proxy public requests to services."""

from __future__ import annotations

import time
import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from meshop.contracts.users import remote_verifier
from meshop.gateway.routes import RouteTable
from meshop.mesh import tracecontext
from meshop.mesh.auth import TokenVerifier
from meshop.mesh.client import ServiceClient
from meshop.mesh.errors import (
    DeadlineExceeded,
    Forbidden,
    GatewayTimeout,
    ProblemError,
    ServiceUnavailable,
    TransportError,
)
from meshop.mesh.openapi import build_openapi
from meshop.mesh.operation import Access, Operation
from meshop.mesh.routing import DEADLINE_HEADER, IDEMPOTENCY_HEADER, Api, json_response, problem_response, read_body
from meshop.mesh.service import Runtime, ServiceDefinition

# Not forwarded: hop-by-hop headers (RFC 9110 §7.6.1) and what the gateway sets itself.
_DROP_REQUEST = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "x-forwarded-for",
        "x-forwarded-proto",
        DEADLINE_HEADER,
    }
)
_PASS_RESPONSE = ("content-type", "retry-after", "location", "etag", "cache-control", "x-request-id")


class Proxy:
    """Forwards one public request to an instance of its service."""

    def __init__(
        self,
        client: ServiceClient,
        verifier: TokenVerifier,
        *,
        timeout_s: float,
        max_body_bytes: int,
        debug_headers: bool = False,
    ) -> None:
        self._debug_headers = debug_headers
        self._client = client
        self._verifier = verifier
        self._routes = RouteTable()
        self._timeout_s = timeout_s
        self._max_body_bytes = max_body_bytes

    async def handle(self, request: Request) -> Response:
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        # Continue the caller's trace, or start one: every call and event below carries it.
        incoming = request.headers.get(tracecontext.HEADER)
        tracecontext.set_current(incoming if tracecontext.valid(incoming) else tracecontext.start())
        try:
            response = await self._handle(request, request_id)
        except ProblemError as exc:
            response = problem_response(exc, instance=request.url.path)
        response.headers["x-request-id"] = request_id
        return response

    async def _handle(self, request: Request, request_id: str) -> Response:
        service = request.path_params["service"]
        path = "/" + request.path_params.get("rest", "")
        match = self._routes.resolve(service, request.method, path)
        if match.operation.access in (Access.USER, Access.ADMIN):
            identity = await self._verifier.verify_header(request.headers.get("authorization"))
            if match.operation.access is Access.ADMIN and not identity.is_admin:
                raise Forbidden("this route requires the admin role")
        body = await read_body(request, self._max_body_bytes)
        headers = {k: v for k, v in request.headers.items() if k not in _DROP_REQUEST}
        headers["x-request-id"] = request_id
        if request.client is not None:
            headers["x-forwarded-for"] = request.client.host
        target = path + (f"?{request.url.query}" if request.url.query else "")
        return await self._forward(service, request.method, target, headers, body, match.operation)

    async def _forward(
        self, service: str, method: str, target: str, headers: dict[str, str], body: bytes, op: Operation[Any, Any]
    ) -> Response:
        key = headers.pop(IDEMPOTENCY_HEADER, None)
        try:
            answer = await self._client.request(
                service,
                method,
                target,
                body=body or None,
                headers=headers,
                retry_safe=op.retry_safe,
                idempotency_key=key,
                deadline=time.monotonic() + self._timeout_s,
                subject=op.subject,
            )
        except TransportError as exc:
            if exc.sent:
                raise GatewayTimeout(f"{service} did not answer in time") from None
            raise ServiceUnavailable(f"{service} is unavailable", retry_after_s=1.0) from None
        except DeadlineExceeded:
            raise GatewayTimeout(f"{service} did not answer within {self._timeout_s:.0f}s") from None
        out = {k: answer.headers[k] for k in _PASS_RESPONSE if k in answer.headers}
        if self._debug_headers:  # internal topology: only when asked for
            out["x-meshop-upstream"] = answer.instance.instance_id
            out["x-meshop-transport"] = "nats" if "meshop-status" in answer.headers else "http"
        return Response(answer.body, status_code=answer.status, headers=out)


async def build(runtime: Runtime) -> Api:
    api = Api("gateway", max_body_bytes=runtime.settings.max_body_bytes)
    proxy = Proxy(
        runtime.client,
        remote_verifier(runtime),
        timeout_s=runtime.settings.call_timeout_s,
        max_body_bytes=runtime.settings.max_body_bytes,
        debug_headers=runtime.settings.debug_headers,
    )
    routes = RouteTable()

    async def openapi(_request: Request) -> Response:
        doc = build_openapi("shop", api.version, [])
        for service, ops in routes.operations().items():
            part = build_openapi(service, api.version, ops, prefix=f"/api/{service}")
            doc["paths"].update(part["paths"])
            doc["components"]["schemas"].update(part["components"]["schemas"])
        doc["info"]["title"] = "meshop shop API"
        return json_response(doc)

    async def instances(request: Request) -> Response:
        if request.client is None or request.client.host not in ("127.0.0.1", "::1"):
            return problem_response(Forbidden("only loopback clients may list instances"))
        rows: list[dict[str, Any]] = []
        for service in runtime.registry.view.services():
            for inst in runtime.registry.instances(service):
                rows.append(
                    {
                        "service": inst.service,
                        "instance_id": inst.instance_id,
                        "pid": inst.pid,
                        "address": f"{inst.address}:{inst.port}",
                        "zone": inst.zone,
                        "version": inst.version,
                        "started_at": inst.started_at,
                    }
                )
        return json_response(rows)

    methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
    api.extra_routes = [
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/_meshop/instances", instances, methods=["GET"]),
        Route("/api/{service}/{rest:path}", proxy.handle, methods=methods),
        Route("/api/{service}", proxy.handle, methods=methods),
    ]
    return api


DEFINITION = ServiceDefinition(name="gateway", build=build)
