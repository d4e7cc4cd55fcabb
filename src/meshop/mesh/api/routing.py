"""The typed route layer: operations become Starlette routes with msgspec bodies.

A handler is `async def handler(ctx: RequestContext, body: Req) -> Resp`. The layer
authenticates by the operation's `Access` (an INTERNAL operation: the calling service's
identity, then its contract's `callers`; default deny), enforces `Idempotency-Key` where required,
decodes and validates the body (400 malformed, 413 too large, 422 invalid), encodes the
result, turns every `ProblemError` into `application/problem+json`, and never lets a
stack trace reach a client. It also builds the service's OpenAPI 3.1 document.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec
import structlog
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from meshop.mesh.api.operation import Access, Operation
from meshop.mesh.api.validation import validation_message
from meshop.mesh.data.availability import unavailable
from meshop.mesh.errors import (
    PROBLEM_CONTENT_TYPE,
    BadRequest,
    DeadlineExceeded,
    Forbidden,
    GatewayTimeout,
    InternalError,
    PayloadTooLarge,
    ProblemError,
    ServiceUnavailable,
    TransportError,
    Unauthorized,
    Unprocessable,
)
from meshop.mesh.headers import ANSWER_EXTENSION, DEADLINE_HEADER, IDEMPOTENCY_HEADER, IDENTITY_HEADER
from meshop.mesh.security.identity import CallerVerifier
from meshop.mesh.security.tokens import Identity, TokenVerifier
from meshop.mesh.telemetry import tracecontext, tracing
from meshop.mesh.telemetry.metrics import Metrics
from meshop.mesh.telemetry.tracing import SpanKind

log = structlog.get_logger("meshop.routing")

#: Retry-After of a 503 answered because a service this one calls did not answer.
DEPENDENCY_RETRY_AFTER_S = 1.0
MAX_IDEMPOTENCY_KEY = 200

Handler = Callable[["RequestContext", Any], Awaitable[Any]]
#: An operation's endpoint, as HTTP and NATS hand it a request: a `Reply` for what a handler
#: returns, a Starlette `Response` for a problem or a response the handler made itself.
Endpoint = Callable[["Incoming"], Awaitable["Reply | Response"]]

_encoder = msgspec.json.Encoder()


class RequestContext:
    """What a handler knows about the request besides its body.

    A plain class, not a dataclass: compiled, its `__init__` is native (decision 0014).
    """

    __slots__ = ("deadline", "idempotency_key", "identity", "incoming", "operation", "path_params")

    def __init__(
        self,
        *,
        incoming: Incoming,
        operation: Operation[Any, Any],
        path_params: dict[str, str],
        identity: Identity | None,
        idempotency_key: str | None,
        deadline: float | None,
    ) -> None:
        self.incoming = incoming
        self.operation = operation
        self.path_params = path_params
        self.identity = identity
        self.idempotency_key = idempotency_key
        #: Monotonic time by which the caller stops waiting.
        self.deadline = deadline

    @property
    def request(self) -> Request:
        """The request as Starlette has it (its client, its query): over NATS, made when asked for."""
        return self.incoming.request

    @property
    def user(self) -> Identity:
        """The caller's identity; only valid on USER and ADMIN operations."""
        if self.identity is None:
            raise RuntimeError(f"{self.operation.qualified} is not an authenticated operation")
        return self.identity

    def remaining_s(self, default: float) -> float:
        """Seconds left before the caller's deadline (or `default` when it set none)."""
        if self.deadline is None:
            return default
        return max(0.0, min(default, self.deadline - time.monotonic()))

    def query_int(self, name: str, *, default: int, low: int, high: int) -> int:
        raw = self.request.query_params.get(name)
        if raw is None or raw == "":
            return default
        try:
            value = int(raw)
        except ValueError:
            raise Unprocessable(f"query parameter {name!r} must be an integer") from None
        if not low <= value <= high:
            raise Unprocessable(f"query parameter {name!r} must be between {low} and {high}")
        return value

    def query_str(self, name: str, *, max_length: int = 200) -> str | None:
        raw = self.request.query_params.get(name)
        if raw is not None and len(raw) > max_length:
            raise Unprocessable(f"query parameter {name!r} is longer than {max_length} characters")
        return raw or None


class Incoming:
    """One request as an operation's endpoint reads it, whichever transport brought it.

    `headers` are looked up by lower-case name; `path` is decoded, without its query.
    Over HTTP it wraps the server's Starlette request; over NATS it is made from the
    message alone, and the Starlette request a handler may ask for is built only then:
    most never do, and building it was most of what serving a NATS request cost.
    """

    __slots__ = ("_body", "_method", "_query", "_request", "headers", "path", "path_params")

    def __init__(
        self,
        headers: Mapping[str, str],
        path: str,
        path_params: dict[str, str],
        *,
        request: Request | None = None,
        method: str = "GET",
        query: str = "",
        body: bytes = b"",
    ) -> None:
        self.headers = headers
        self.path = path
        self.path_params = path_params
        self._request = request
        self._method = method
        self._query = query
        self._body = body

    @staticmethod
    def of(request: Request) -> Incoming:
        """An HTTP request's."""
        params = request.path_params
        return Incoming(
            request.headers,
            request.scope["path"],
            {k: str(v) for k, v in params.items()} if params else {},
            request=request,
        )

    async def body(self, max_bytes: int) -> bytes:
        """The body, or `PayloadTooLarge` (413) as soon as it exceeds `max_bytes`."""
        if self._request is not None:
            return await read_body(self._request, max_bytes)
        if len(self._body) > max_bytes:
            raise PayloadTooLarge(f"request body is larger than {max_bytes} bytes")
        return self._body

    @property
    def request(self) -> Request:
        request = self._request
        if request is None:
            body = self._body
            scope = {
                "type": "http",
                "http_version": "1.1",
                "method": self._method,
                "scheme": "nats",
                "path": self.path,
                "raw_path": self.path.encode(),
                "query_string": self._query.encode(),
                "root_path": "",
                "headers": [(k.encode(), v.encode()) for k, v in self.headers.items()],
                "client": ("nats", 0),
                "server": None,
                "path_params": self.path_params,
            }

            async def receive() -> dict[str, Any]:
                return {"type": "http.request", "body": body, "more_body": False}

            request = self._request = Request(scope, receive)
        return request


class Reply:
    """A handler's result as its endpoint answers it: a status and a JSON body (or none).

    Not a Starlette `Response`: most answers go out over NATS, which needs neither its
    headers nor its ASGI call, and building one was most of what answering cost when the
    code was cold (a process idle between requests, as across a 45 ms link).
    """

    __slots__ = ("body", "status_code")

    def __init__(self, body: bytes, status_code: int) -> None:
        self.body = body
        self.status_code = status_code

    async def send(self, send: Send) -> None:
        """Answer over ASGI, with the headers a Starlette `Response` would send."""
        status, body = self.status_code, self.body
        headers = []
        if status >= 200 and status not in (204, 304):
            headers.append((b"content-length", str(len(body)).encode()))
        if body:
            headers.append((b"content-type", b"application/json"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def head(self) -> bytes:
        """The same headers as `send`'s, as the lines of an HTTP head (`ANSWER_EXTENSION`)."""
        status, body = self.status_code, self.body
        head = b"content-length: %d\r\n" % len(body) if status >= 200 and status not in (204, 304) else b""
        return head + b"content-type: application/json\r\n" if body else head


def dependency_problem(exc: TransportError | DeadlineExceeded) -> ProblemError:
    """The answer to a request that failed because a call it made to another service did.

    A handler that lets such an error through has nothing better to say, but it is not this
    service's bug (500): the caller learns the request may succeed later (503 with
    Retry-After), or that its deadline ran out on the way (504).
    """
    if isinstance(exc, DeadlineExceeded):
        return GatewayTimeout("the request's deadline passed while a service it needs was answering")
    return ServiceUnavailable(
        "a service this request needs did not answer; try again later", retry_after_s=DEPENDENCY_RETRY_AFTER_S
    )


def database_problem() -> ProblemError:
    """The answer to a request that failed because this service's database could not be
    reached (restarting, recovering, cut off): 503 with Retry-After, never a 500."""
    return ServiceUnavailable(
        "this service's database cannot be reached now; try again later", retry_after_s=DEPENDENCY_RETRY_AFTER_S
    )


def problem_response(error: ProblemError, *, instance: str | None = None) -> Response:
    """`error` as an RFC 9457 problem+json answer with its status (and `Retry-After` when it has one)."""
    headers = dict(error.headers) if error.headers else {}
    if error.retry_after_s is not None:
        headers["retry-after"] = str(max(1, round(error.retry_after_s)))
    return Response(
        _encoder.encode(error.to_problem(instance=instance)),
        status_code=error.status,
        media_type=PROBLEM_CONTENT_TYPE,
        headers=headers,
    )


def json_response(value: Any, *, status: int = 200) -> Response:
    """A JSON answer with `value` as its body (encoded by msgspec) and `status`."""
    return Response(_encoder.encode(value), status_code=status, media_type="application/json")


@dataclass(slots=True)
class Faults:
    """Injected faults for chaos tests (`MESHOP_CHAOS=1`): added latency, a share of 500s."""

    latency_ms: float = 0.0
    error_rate: float = 0.0

    async def apply(self) -> None:
        if self.latency_ms:
            await asyncio.sleep(self.latency_ms / 1000)
        if self.error_rate and random.random() < self.error_rate:
            raise InternalError("injected fault")


class Api:
    """A service's operations and their handlers."""

    def __init__(
        self,
        service: str,
        *,
        verifier: TokenVerifier | None = None,
        max_body_bytes: int = 1_048_576,
        version: str = "0.1.0",
    ) -> None:
        self.service = service
        self.verifier = verifier
        self.max_body_bytes = max_body_bytes
        self.version = version
        self._handlers: dict[Operation[Any, Any], Handler] = {}
        #: Routes outside the operation model (a proxy, static pages).
        self.extra_routes: list[BaseRoute] = []
        #: An ASGI app in front of the routes: it takes what it serves (a proxy's hot path)
        #: and hands the rest to the app it wraps.
        self.front: Callable[[ASGIApp], ASGIApp] | None = None
        #: Set while a service drains: new requests are refused with 503.
        self.accepting = True
        #: Chaos-test faults; None unless the process enables them.
        self.faults: Faults | None = None
        #: RED metrics of every operation, when the process keeps metrics.
        self.metrics: Metrics | None = None
        #: Verifies the calling service of INTERNAL operations; None: every such call is refused.
        self.callers: CallerVerifier | None = None

    def implement(self, operation: Operation[Any, Any]) -> Callable[[Handler], Handler]:
        """Register the handler of `operation` (a decorator)."""
        if operation.service != self.service:
            raise ValueError(f"{operation.qualified} does not belong to service {self.service!r}")

        def decorate(handler: Handler) -> Handler:
            if operation in self._handlers:
                raise ValueError(f"{operation.qualified} is implemented twice")
            self._handlers[operation] = handler
            return handler

        return decorate

    @property
    def operations(self) -> list[Operation[Any, Any]]:
        return list(self._handlers)

    def endpoints(self) -> dict[Operation[Any, Any], Endpoint]:
        """Each operation's endpoint: what HTTP and NATS both hand a request to."""
        return {op: self._endpoint(op, handler) for op, handler in self._handlers.items()}

    def routes(self) -> list[Route]:
        # Literal paths first, so `/products/search` wins over `/products/{id}`.
        ordered = sorted(self._handlers.items(), key=lambda item: ("{" in item[0].path, item[0].path))
        return [
            Route(op.path, _Endpoint(self._endpoint(op, handler)), methods=[op.method], name=op.qualified)
            for op, handler in ordered
        ]

    def _endpoint(self, op: Operation[Any, Any], handler: Handler) -> Endpoint:
        async def endpoint(request: Incoming) -> Reply | Response:
            metrics = self.metrics
            if metrics is None:
                return await serve(request)
            started = time.perf_counter()
            metrics.in_flight += 1
            try:
                response = await serve(request)
            finally:
                metrics.in_flight -= 1
            metrics.observe(op.qualified, op.method, response.status_code, time.perf_counter() - started)
            return response

        span_name = f"{op.method} {op.path}"
        span_attributes = {"http.request.method": op.method, "http.route": op.path, "meshop.operation": op.qualified}

        async def serve(request: Incoming) -> Reply | Response:
            parent = request.headers.get(tracecontext.HEADER)
            with tracing.span(span_name, SpanKind.SERVER, parent=parent, attributes=span_attributes) as span:
                response = await answer(request)
                if span is not None:
                    span.set_attribute("http.response.status_code", response.status_code)
                    if response.status_code >= 500:
                        tracing.fail(span, f"answered {response.status_code}")
                return response

        async def answer(request: Incoming) -> Reply | Response:
            try:
                if not self.accepting:
                    raise ServiceUnavailable("instance is draining", retry_after_s=1.0)
                headers = request.headers
                ctx = RequestContext(
                    incoming=request,
                    operation=op,
                    path_params=request.path_params,
                    identity=await self._authenticate(op, headers),
                    idempotency_key=_idempotency_key(op, headers),
                    deadline=_deadline(headers),
                )
                tracecontext.set_request_id(headers.get("x-request-id"))
                body = await self._decode(op, request)
                if self.faults is not None:
                    await self.faults.apply()
                result = await handler(ctx, body)
                if isinstance(result, Response):
                    return result
                return Reply(b"" if result is None else _encoder.encode(result), op.status)
            except ProblemError as exc:
                return problem_response(exc, instance=request.path)
            except (TransportError, DeadlineExceeded) as exc:
                log.warning("a call this request needed failed", operation=op.qualified, error=repr(exc))
                return problem_response(dependency_problem(exc), instance=request.path)
            except Exception as exc:
                if unavailable(exc):  # not this request's fault, nor a bug: it may succeed later
                    log.warning("the database could not be reached", operation=op.qualified, error=repr(exc))
                    return problem_response(database_problem(), instance=request.path)
                log.exception("unhandled error", operation=op.qualified)
                return problem_response(InternalError("the server failed to handle this request"))

        return endpoint

    async def _authenticate(self, op: Operation[Any, Any], headers: Mapping[str, str]) -> Identity | None:
        if op.access is Access.INTERNAL:
            self._check_caller(op, headers)
            return None
        if op.access is Access.PUBLIC:
            return None
        if self.verifier is None:
            raise RuntimeError(f"{op.qualified} needs a token verifier")
        identity = await self.verifier.verify_header(headers.get("authorization"))
        if op.access is Access.ADMIN and not identity.is_admin:
            raise Forbidden("this operation requires the admin role")
        return identity

    def _check_caller(self, op: Operation[Any, Any], headers: Mapping[str, str]) -> None:
        """401 unless the request proves a calling service; 403 unless the contract lists it."""
        try:
            if self.callers is None:
                raise Unauthorized("this instance verifies no service identity: its INTERNAL operations are closed")
            caller = self.callers.caller(headers.get(IDENTITY_HEADER))
        except Unauthorized as exc:
            self._refused(op, "unauthenticated", "none", exc.detail)
            raise
        if caller not in op.callers:
            self._refused(op, "forbidden", caller, "not an allowed caller")
            raise Forbidden(f"service {caller!r} may not call {op.qualified}")

    def _refused(self, op: Operation[Any, Any], outcome: str, caller: str, reason: str | None) -> None:
        log.warning("call refused", operation=op.qualified, outcome=outcome, caller=caller, reason=reason)
        if self.metrics is not None:
            self.metrics.observe_refusal(op.qualified, outcome, caller)

    async def _decode(self, op: Operation[Any, Any], request: Incoming) -> Any:
        if op.request is None:
            return None
        return decode_body(await request.body(self.max_body_bytes), op.request, optional=op.body_optional)

    def openapi(self) -> dict[str, Any]:
        """This service's OpenAPI 3.1 document."""
        from meshop.mesh.api.openapi import build_openapi

        return build_openapi(self.service, self.version, self.operations)


class _Endpoint:
    """An operation's endpoint as the ASGI app a Starlette `Route` runs.

    Starlette wraps an endpoint into an app only when it is a Python function; compiled
    (decision 0014), it is not, and `Route` would call it as an app itself. The endpoint
    answers every error itself, so there is nothing for Starlette's exception layer to do.
    """

    __slots__ = ("endpoint",)

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = await self.endpoint(Incoming.of(Request(scope, receive, send)))
        if isinstance(response, Reply):
            extensions = scope.get("extensions")
            answer = extensions.get(ANSWER_EXTENSION) if extensions else None
            if answer is not None:  # the mesh's server: the whole answer in one call, no messages
                answer(response.status_code, response.head(), response.body)
            else:
                await response.send(send)
        else:
            await response(scope, receive, send)


class Dispatch:
    """An ASGI app sending each operation's HTTP request straight to its endpoint, the rest to `app`.

    Starlette's own layers (its error and exception middleware, then a regular expression per
    route until one matches) cost 20–45 µs a request in pure Python, on a path whose
    endpoints answer every error themselves (decision 0045). A request that is not exactly an
    operation's method and path (HEAD, another method, a trailing slash, a route of the
    process's own) goes to `app`, the Starlette app of all the routes, which answers it as
    before: 404, 405 and redirects stay Starlette's. An operation that a route before it in
    `routes` would take (a process's own route on the same path) is left to `app` too.
    """

    __slots__ = ("_app", "_literal", "_templated")

    def __init__(self, routes: list[BaseRoute], app: ASGIApp) -> None:
        self._app = app
        self._literal: dict[tuple[str, str], ASGIApp] = {}
        #: (method, number of segments) -> each template's literal segments (None where a
        #: parameter goes), its parameters' names, the paths it matches that a route before
        #: it takes (`/ready` for `/{id}`), and its endpoint, in `routes`' order.
        self._templated: dict[tuple[str, int], list[_Template]] = {}
        earlier: list[BaseRoute] = []
        dispatched: list[BaseRoute] = []  # the templated ones, matched in this order
        for route in routes:
            if isinstance(route, Route) and isinstance(route.endpoint, _Endpoint) and route.methods:
                method = next(m for m in route.methods if m != "HEAD")
                if "{" not in route.path:
                    if not any(_takes(before, method, route.path) for before in earlier):
                        self._literal.setdefault((method, route.path), route.endpoint)
                else:
                    template = _Template(route.path, route.endpoint)
                    if template.add_earlier(earlier, method, dispatched):
                        self._templated.setdefault((method, len(template.segments)), []).append(template)
                        dispatched.append(route)
            earlier.append(route)

    def _match(self, method: str, path: str) -> tuple[ASGIApp, dict[str, str]] | None:
        endpoint = self._literal.get((method, path))
        if endpoint is not None:
            return endpoint, {}
        parts = path.split("/")
        candidates = self._templated.get((method, len(parts)))
        if candidates is None:
            return None
        for template in candidates:
            params = template.match(parts)
            if params is not None:
                return None if path in template.shadowed else (template.endpoint, params)
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not scope.get("root_path"):
            found = self._match(scope["method"], scope["path"])
            if found is not None:
                endpoint, params = found
                scope["path_params"] = params
                await endpoint(scope, receive, send)
                return
        await self._app(scope, receive, send)


class _Template:
    """An operation's templated path, as `Dispatch` matches it."""

    __slots__ = ("endpoint", "names", "segments", "shadowed")

    def __init__(self, path: str, endpoint: ASGIApp) -> None:
        parts = path.split("/")
        self.segments: list[str | None] = [None if p.startswith("{") else p for p in parts]
        self.names = [p[1:-1] if p.startswith("{") else "" for p in parts]
        self.endpoint = endpoint
        self.shadowed: set[str] = set()

    def match(self, parts: list[str]) -> dict[str, str] | None:
        """Its path parameters from a path's segments (as many as its own), or None."""
        params: dict[str, str] = {}
        for part, segment, name in zip(parts, self.segments, self.names, strict=True):
            if segment is not None:
                if part != segment:
                    return None
            elif part:
                params[name] = part
            else:
                return None  # a parameter is never empty
        return params

    def add_earlier(self, earlier: list[BaseRoute], method: str, dispatched: list[BaseRoute]) -> bool:
        """Note the literal paths that routes before it take; False when a route before it
        may take more (its own template, a mount) and is not `dispatched` before it in order:
        then Starlette decides each of its requests."""
        sample = "/".join("x" if s is None else s for s in self.segments)
        for before in earlier:
            if isinstance(before, Route) and "{" not in before.path:
                parts = before.path.split("/")
                takes_method = not before.methods or method in before.methods
                if takes_method and len(parts) == len(self.segments) and self.match(parts) is not None:
                    self.shadowed.add(before.path)
            elif isinstance(before, Route) and ":" not in before.path:  # {name} segments only
                if before in dispatched or (before.methods and method not in before.methods):
                    continue  # an operation matched before this one, as Starlette would; another method
                theirs = before.path.split("/")
                if len(theirs) == len(self.segments) and all(
                    t.startswith("{") or s is None or t == s for t, s in zip(theirs, self.segments, strict=True)
                ):
                    return False
            elif _takes(before, method, sample):
                return False
        return True


def serving(routes: list[BaseRoute], **starlette: Any) -> ASGIApp:
    """`routes` as a process serves them: its operations through `Dispatch`, the rest by a
    `Starlette` app (`starlette`: its options, e.g. `exception_handlers`)."""
    return Dispatch(routes, Starlette(routes=routes, **starlette))


def _takes(route: BaseRoute, method: str, path: str) -> bool:
    """Whether `route` would take a request for `path` (a literal path, or a template's sample)."""
    match, _ = route.matches({"type": "http", "method": method, "path": path, "root_path": ""})
    return match is Match.FULL


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The request's body, or `PayloadTooLarge` (413) as soon as it exceeds `max_bytes`."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > max_bytes:
        raise PayloadTooLarge(f"request body is larger than {max_bytes} bytes")
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:
                raise PayloadTooLarge(f"request body is larger than {max_bytes} bytes")
            chunks.append(chunk)
    except ClientDisconnect:  # nobody reads the answer; it is the client's doing, not a 500
        raise BadRequest("the client went away before its body was complete") from None
    return b"".join(chunks)


def decode_body(raw: bytes, type_: type[Any], *, optional: bool = False) -> Any:
    """Decode and validate a JSON body: 400 when it is not JSON, 422 when it is invalid.

    An empty body is `{}` when `optional` (no field of `type_` is required).
    """
    if not raw.strip():
        if not optional:
            raise BadRequest("request body is empty; expected a JSON document")
        raw = b"{}"
    try:
        return msgspec.json.decode(raw, type=type_)
    except msgspec.ValidationError as exc:
        raise Unprocessable(validation_message(exc, type_)) from None
    except msgspec.DecodeError as exc:
        raise BadRequest(f"malformed JSON: {exc}") from None


def _idempotency_key(op: Operation[Any, Any], headers: Mapping[str, str]) -> str | None:
    key = headers.get(IDEMPOTENCY_HEADER)
    if key is not None and not 0 < len(key) <= MAX_IDEMPOTENCY_KEY:
        raise BadRequest(f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} characters")
    if key is None and op.requires_key:
        raise BadRequest("this operation requires an Idempotency-Key header")
    return key


def _deadline(headers: Mapping[str, str]) -> float | None:
    raw = headers.get(DEADLINE_HEADER)
    if raw is None:
        return None
    try:
        remaining_ms = int(raw)
    except ValueError:
        raise BadRequest(f"{DEADLINE_HEADER} must be an integer number of milliseconds") from None
    return time.monotonic() + max(0, remaining_ms) / 1000.0
