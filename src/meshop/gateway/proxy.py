"""The gateway's request pipeline: one public request, from the socket to a service and back.

header limits → per-address rate limit → route (routes file, then the service's contract)
→ authentication and roles → per-user and per-route rate limits → public GET cache →
body limit → the mesh client's resilience chain → response with security, CORS, request-id
and RateLimit headers → one JSON access-log line. Every refusal is problem+json.
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import msgspec
import structlog
from starlette.types import Receive, Scope, Send

from meshop.gateway.accesslog import AccessLog
from meshop.gateway.config import RouteRules, Rule
from meshop.gateway.routes import RouteTable
from meshop.mesh.api.openapi import stricter
from meshop.mesh.api.operation import Access, Operation
from meshop.mesh.client.client import Answer as CallAnswer
from meshop.mesh.client.client import CallOptions, ServiceClient
from meshop.mesh.errors import (
    PROBLEM_CONTENT_TYPE,
    BadRequest,
    DeadlineExceeded,
    Forbidden,
    GatewayTimeout,
    HeadersTooLarge,
    InternalError,
    NotFound,
    PayloadTooLarge,
    ProblemError,
    ServiceUnavailable,
    TooManyRequests,
    TransportError,
)
from meshop.mesh.headers import DEADLINE_HEADER, IDEMPOTENCY_HEADER
from meshop.mesh.resilience.ratelimit import Decision, Limit, Limiter, LocalLimiter
from meshop.mesh.security.tokens import Identity, TokenVerifier
from meshop.mesh.telemetry import tracecontext, tracing
from meshop.mesh.telemetry.metrics import Metrics
from meshop.mesh.telemetry.tracing import SpanKind
from meshop.mesh.transport.server import ANSWER_EXTENSION

log = structlog.get_logger("meshop.gateway")
T = TypeVar("T")
_encode = msgspec.json.Encoder().encode
# Module-level Finals are C statics when compiled; `time.x()` looks `x` up on the module per call (~270 instructions).
_perf_counter: Final = time.perf_counter
_monotonic: Final = time.monotonic
# An enum member of an interpreted module is a class attribute lookup per use.
_PUBLIC: Final = Access.PUBLIC
_ADMIN: Final = Access.ADMIN

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
_PASS_RESPONSE: tuple[str, ...] = ("content-type", "retry-after", "location", "etag", "cache-control", "x-request-id")
_NONE: dict[str, Any] = {}
SECURITY_HEADERS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "content-security-policy": "default-src 'none'; frame-ancestors 'none'",
    "cross-origin-resource-policy": "same-origin",
}
_CORS_ALLOW_HEADERS = "authorization, content-type, idempotency-key, traceparent, x-request-id"
_CORS_EXPOSE_HEADERS = (
    "x-request-id, retry-after, ratelimit-limit, ratelimit-remaining, ratelimit-reset, ratelimit-policy"
)


@dataclass(frozen=True)
class GatewayLimits:
    max_body_bytes: int
    max_header_bytes: int
    timeout_s: float


@dataclass(slots=True)
class _Cached:
    status: int
    body: bytes
    headers: dict[str, str]
    stored_at: float
    expires_at: float


class ResponseCache:
    """Answers to public GETs, per route TTL; bounded, least recently used evicted."""

    def __init__(self, *, max_entries: int = 10_000, max_body_bytes: int = 256 * 1024) -> None:
        self._entries: OrderedDict[str, _Cached] = OrderedDict()
        self._max_entries = max_entries
        self._max_body_bytes = max_body_bytes
        self.hits = self.misses = 0

    def get(self, key: str, now: float) -> _Cached | None:
        entry = self._entries.get(key)
        if entry is None or entry.expires_at <= now:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry

    def put(self, key: str, entry: _Cached) -> None:
        if len(entry.body) > self._max_body_bytes:
            return
        self._entries[key] = entry
        self._entries.move_to_end(key)
        if len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)


class Proxy:
    """Routes, guards and forwards public requests to the services."""

    def __init__(
        self,
        client: ServiceClient,
        verifier: TokenVerifier,
        limiter: Limiter,
        rules: RouteRules,
        limits: GatewayLimits,
        *,
        cors_origins: frozenset[str] = frozenset(),
        hsts: bool = False,
        debug_headers: bool = False,
        access_log: AccessLog | None = None,
        metrics: Metrics | None = None,
        operations: RouteTable | None = None,
    ) -> None:
        self._metrics = metrics
        self._client = client
        self._verifier = verifier
        self._limiter = limiter
        self._local_limiter = limiter if isinstance(limiter, LocalLimiter) else None
        self.rules = rules
        self._limits = limits
        self._operations = operations or RouteTable()
        self._cache = ResponseCache()
        self._cors_origins = cors_origins
        security = {**SECURITY_HEADERS, **({"strict-transport-security": "max-age=31536000"} if hsts else {})}
        self._security = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in security.items()]
        self._security_lines = b"".join([b"%s: %s\r\n" % pair for pair in self._security])
        self._debug_headers = debug_headers
        self._access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI app of `/api/...`: no framework between the socket and the pipeline."""
        started = _perf_counter()
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        # The gateway records its span whatever the caller's sampled flag: the console decides.
        parent = _parent(headers)
        with tracing.span("gateway", SpanKind.SERVER, parent=parent) as span:
            traceparent = tracecontext.current() or ""
            state = self._state(scope, headers, traceparent, continued=parent is not None)
            tracecontext.set_request_id(state.request_id)
            metrics = self._metrics
            if metrics is not None:
                metrics.in_flight += 1
            try:
                status = await self._answer(scope, receive, send, headers, state)
            finally:  # a client gone mid-answer (or a cancelled task) must not leave it counted
                if metrics is not None:
                    metrics.in_flight -= 1
            self._annotate(span, scope["method"], status, state)
        self._count(scope, status, state, started, traceparent)

    def lane(self, scope: Scope, answer: Callable[[int, bytes, bytes], None]) -> bool:
        """The common request, answered without a task (the lean server's lane, decision 0010).

        Taken when nothing in the pipeline can have to wait or refuse before the call: no
        body, a route and operation that exist, a public route or a token verified before
        with the role needed, limits kept in this process. Then the pipeline (`_pipeline`)
        runs from the protocol callback, in one step, the mesh client's chain
        forwards the request through callbacks (`ServiceClient.start`), and `answer` gets
        the whole answer (`_answered`, as on the general path). Anything else is False,
        with nothing done or counted yet: the general path serves it.
        """
        local = self._local_limiter
        method: str = scope["method"]
        raw: list[tuple[bytes, bytes]] = scope["headers"]
        if local is None or method == "OPTIONS" or self.header_refusal(raw) is not None:
            return False
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in raw}
        if "content-length" in headers or "transfer-encoding" in headers:
            return False
        try:
            rule, path, op, method = self._route(scope, None)
        except ProblemError:
            return False
        access = stricter(op.access, rule.access)
        identity: Identity | None = None
        if access is not _PUBLIC:
            identity = self._verifier.known(headers.get("authorization"))
            if identity is None or (access is _ADMIN and not identity.is_admin):
                return False
        started = _perf_counter()
        parent = _parent(headers)
        span, traceparent = tracing.open_span("gateway", SpanKind.SERVER, parent=parent)
        state = self._state(scope, headers, traceparent, continued=parent is not None)
        pending = _Lane(self, scope, headers, answer, state, span, started, traceparent)
        if self._metrics is not None:
            self._metrics.in_flight += 1
        try:
            # The pipeline in one step: what could make it wait was ruled out above.
            prepared = _first(self._pipeline(scope, headers, state, (rule, path, op, method), identity))
            if isinstance(prepared, _Wait):
                raise RuntimeError("the gateway's pipeline waited on the lane")
            if isinstance(prepared, _Forward):
                pending.forward = prepared
                self._client.start(
                    rule.service,
                    method,
                    prepared.target,
                    pending.forwarded,
                    prepared.options,
                    traceparent=traceparent,
                    caller_span=span,
                )
            else:  # cached
                pending.respond(*prepared)
        except ProblemError as exc:
            pending.respond(*_problem(exc, scope["path"]))
        except Exception:  # a bug: still a problem+json answer, and a log line to fix it from
            log.exception("gateway failed", path=scope["path"], request_id=state.request_id, **_trace(traceparent))
            pending.respond(*_problem(InternalError("the gateway failed to handle this request"), scope["path"]))
        return True

    @staticmethod
    def _state(scope: Scope, headers: dict[str, str], traceparent: str, *, continued: bool) -> _RequestState:
        # A new trace's random id names the request too: one system call, not two.
        request_id = headers.get("x-request-id", "")[:128] or (os.urandom(16).hex() if continued else traceparent[3:35])
        client = scope.get("client")
        return _RequestState(request_id=request_id, client_ip=client[0] if client else "unknown")

    def _annotate(self, span: tracing.SpanRecord | None, method: str, status: int, state: _RequestState) -> None:
        if span is not None:
            span.name = f"{method} {state.template}"
            span.attributes.update(
                {
                    "http.request.method": method,
                    "http.route": state.template,
                    "http.response.status_code": status,
                    "meshop.request_id": state.request_id,
                }
            )
            if state.cache is not None:
                span.attributes["meshop.cache"] = state.cache
            if status >= 500:
                tracing.fail(span, f"answered {status}")

    def _count(self, scope: Scope, status: int, state: _RequestState, started: float, traceparent: str) -> None:
        """The request's RED metrics and its access-log line."""
        seconds = _perf_counter() - started
        metrics = self._metrics
        if metrics is not None:
            metrics.observe(state.route, scope["method"], status, seconds)
            if state.cache is not None:
                metrics.observe_cache(state.cache)
        if self._access_log is not None:
            self._access_log.write(
                method=scope["method"],
                path=scope["path"],
                status=status,
                # to the µs, rounded half up: round(x, 3) is a correctly rounded decimal conversion (~2k instructions)
                duration_ms=int(seconds * 1_000_000 + 0.5) / 1000,
                request_id=state.request_id,
                trace_id=traceparent[3:35],
                user_id=state.user_id,
                client=state.client_ip,
                upstream=state.service,
                cache=state.cache,
            )

    async def _answer(
        self, scope: Scope, receive: Receive, send: Send, headers: dict[str, str], state: _RequestState
    ) -> int:
        """Run the pipeline and send its answer (or the problem it raised); the status sent."""
        path: str = scope["path"]
        try:
            status, out, body = await self._handle(scope, receive, headers, state)
        except ProblemError as exc:  # a refusal's RateLimit headers are added below, as for any answer
            status, out, body = _problem(exc, path)
        except Exception:  # a bug: still a problem+json answer, and a log line to fix it from
            log.exception("gateway failed", path=path, request_id=state.request_id)
            status, out, body = _problem(InternalError("the gateway failed to handle this request"), path)
        self._finish_headers(out, headers, state)
        answer = (scope.get("extensions") or _NONE).get(ANSWER_EXTENSION)
        if answer is not None:  # the lean server: the head as one string, one call, no messages
            answer(status, self._head(status, out, body, state), body)
            return status
        out["x-request-id"] = state.request_id
        if state.decision is not None and status != 429:
            out.update(state.decision.headers())
        out["content-length"] = str(len(body))
        raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in out.items()]
        raw += self._security  # encoded once (a service's answer never carries these: _PASS_RESPONSE)
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": body})
        return status

    def _finish_headers(self, out: dict[str, str], headers: dict[str, str], state: _RequestState) -> None:
        out.pop("x-request-id", None)  # the service's echo: the gateway sets its own
        origin = headers.get("origin")
        if origin is not None and origin in self._cors_origins:
            out["access-control-allow-origin"] = origin
            out["access-control-expose-headers"] = _CORS_EXPOSE_HEADERS
            out["vary"] = "Origin"

    def _head(self, status: int, out: dict[str, str], body: bytes, state: _RequestState) -> bytes:
        """The answer's header lines, for the lean server's `answer`."""
        lines = "".join([f"{k}: {v}\r\n" for k, v in out.items()])
        # a 429 carries its own (or the service's) RateLimit headers
        limits = state.decision.header_lines() if state.decision is not None and status != 429 else ""
        head = f"{lines}{limits}x-request-id: {state.request_id}\r\ncontent-length: {len(body)}\r\n"
        return head.encode("latin-1") + self._security_lines

    def header_refusal(self, raw: list[tuple[bytes, bytes]]) -> HeadersTooLarge | None:
        """The 431 of a request whose header fields exceed the limit, else None: checked before routing."""
        if _header_bytes(raw) > self._limits.max_header_bytes:
            return HeadersTooLarge(f"request headers exceed {self._limits.max_header_bytes} bytes")
        return None

    def _route(self, scope: Scope, state: _RequestState | None) -> tuple[Rule, str, Operation[Any, Any], str]:
        """A request's route, service-relative path, operation and the method to call it with.

        HEAD is served wherever GET is (RFC 9110 §9.3.2): routed, limited and cached as the
        GET, whose answer the server sends without its body. Raises NotFound or
        MethodNotAllowed (its Allow naming HEAD beside GET).
        """
        method: str = scope["method"]
        if method == "HEAD":
            method = "GET"
        found = self.rules.match(scope["path"], method)
        if found is None:
            raise NotFound("no such route")
        rule, path = found
        if state is not None:  # a 404 or 405 under the route counts there
            state.service, state.route = rule.service, rule.prefix
        return rule, path, self._operations.resolve(rule.service, method, path).operation, method

    def _pipeline(
        self,
        scope: Scope,
        headers: dict[str, str],
        state: _RequestState,
        routed: tuple[Rule, str, Operation[Any, Any], str] | None = None,
        known: Identity | None = None,
    ) -> Generator[_Wait | _Forward | tuple[int, dict[str, str], bytes], Any, None]:
        """The pipeline up to the call, written once for both paths.

        It yields a `_Wait` for what must be waited for (a rate limit kept elsewhere, a
        token to verify, the body), and its driver sends back the result; then, last, what
        to forward or the answer itself (a preflight, a cached GET). A refusal raises its
        `ProblemError`. The general path (`_handle`) drives it with awaits. The lane takes
        only requests for which nothing is waited for (limits kept in this process, a
        known token, no body), passes the route (`routed`) and identity (`known`) it found,
        and takes its one step. It yields its result, not returns it: a generator's return
        value comes in a StopIteration, which costs ~5k instructions to raise and catch.
        """
        if routed is None:  # (the lane checked the headers before it routed)
            refusal = self.header_refusal(scope["headers"])
            if refusal is not None:
                raise refusal
        rules = self.rules
        local = self._local_limiter  # nothing to wait for when the limits' state is in this process
        if rules.per_ip is not None:
            key, limit = f"ip:{state.client_ip}", rules.per_ip
            _admit(state, local.hit_now(key, limit) if local is not None else (yield _Hit(key, limit)))
        if scope["method"] == "OPTIONS" and "access-control-request-method" in headers:
            yield self._preflight(headers)
            return
        rule, path, op, method = routed or self._route(scope, state)
        _routed(state, rule, op)
        access = stricter(op.access, rule.access)  # what /openapi.json documents too
        identity: Identity | None = None
        if access is not _PUBLIC:
            authorization = headers.get("authorization")
            identity = known or self._verifier.known(authorization) or (yield _Verify(authorization))
            assert identity is not None
            state.user_id = identity.user_id
            if access is _ADMIN and not identity.is_admin:
                raise Forbidden("this route requires the admin role")
        for key, limit in self._caller_limits(state, rule, identity):
            _admit(state, local.hit_now(key, limit) if local is not None else (yield _Hit(key, limit)))
        target = _target(scope, rule, path)
        cache_key, cached = self._cached(state, rule, method, access, target)
        if cached is not None:
            yield cached
            return
        # No length and no chunked coding: the request has no body (RFC 9112 §6.3), nothing to wait for.
        framed = "content-length" in headers or "transfer-encoding" in headers
        body: bytes = (yield _READ_BODY) if framed else b""
        options = self._call_options(rule, op, self._forward_headers(headers, state), body or None)
        yield _Forward(rule, method, target, options, cache_key)

    async def _handle(
        self, scope: Scope, receive: Receive, headers: dict[str, str], state: _RequestState
    ) -> tuple[int, dict[str, str], bytes]:
        """The general path: the pipeline, waiting for what it asks, then the call awaited."""
        steps = self._pipeline(scope, headers, state)
        step = _first(steps)
        while isinstance(step, _Wait):
            step = steps.send(await self._wait(step, receive, headers))
        if not isinstance(step, _Forward):
            return step
        result: CallAnswer | Exception
        try:
            # the gateway's span records the call's tries: one span per proxied request
            result = await self._client.request(
                step.rule.service, step.method, step.target, step.options, caller_span=tracing.recording()
            )
        except (TransportError, DeadlineExceeded) as exc:
            result = exc
        return self._answered(step, result, scope["path"])

    async def _wait(self, wait: _Wait, receive: Receive, headers: dict[str, str]) -> Any:
        """What the pipeline waits for: a limit's decision, a verified identity, the body."""
        if isinstance(wait, _Hit):
            return await self._limiter.hit(wait.key, wait.limit)
        if isinstance(wait, _Verify):
            return await self._verifier.verify_header(wait.authorization)
        return await _read_body(receive, headers, self._limits.max_body_bytes)

    def _answered(
        self, forward: _Forward, result: CallAnswer | Exception, path: str
    ) -> tuple[int, dict[str, str], bytes]:
        """The answer to a forwarded request, for both paths: the service's (stored if
        cacheable), or the problem of a call that got none; other errors are raised."""
        rule = forward.rule
        if isinstance(result, CallAnswer):
            status, out, body = self._passed(result, path)
            self._store(forward.cache_key, rule, status, out, body)
            return status, out, body
        if isinstance(result, TransportError | DeadlineExceeded):
            raise _refusal(rule.service, result, rule.timeout_s or self._limits.timeout_s) from None
        raise result

    def _caller_limits(self, state: _RequestState, rule: Rule, identity: Identity | None) -> list[tuple[str, Limit]]:
        """The limits on who calls after the address's: per user, then the route's."""
        limits = []
        if identity is not None and self.rules.per_user is not None:
            limits.append((f"user:{identity.user_id}", self.rules.per_user))
        if rule.rate_limit is not None:
            who = f"user:{identity.user_id}" if identity else f"ip:{state.client_ip}"
            limits.append((f"route:{rule.prefix}:{who}", rule.rate_limit))
        return limits

    def _cached(
        self, state: _RequestState, rule: Rule, method: str, access: Access, target: str
    ) -> tuple[str | None, tuple[int, dict[str, str], bytes] | None]:
        """The cache key of a public GET (None: not cached) and its cached answer, if fresh."""
        if method != "GET" or rule.cache_ttl_s <= 0 or access is not _PUBLIC:
            return None, None
        cache_key = f"{rule.service} {target}"  # public answers only: nothing here depends on who asked
        cached = self._cache.get(cache_key, _monotonic())
        if cached is None:
            state.cache = "miss"
            return cache_key, None
        state.cache = "hit"
        age = str(int(_monotonic() - cached.stored_at))
        return cache_key, (cached.status, {**cached.headers, "age": age}, cached.body)

    def _store(self, cache_key: str | None, rule: Rule, status: int, out: dict[str, str], payload: bytes) -> None:
        if cache_key is not None and status == 200:
            now = _monotonic()
            entry = _Cached(
                status=200, body=payload, headers=dict(out), stored_at=now, expires_at=now + rule.cache_ttl_s
            )
            self._cache.put(cache_key, entry)

    @staticmethod
    def _forward_headers(headers: dict[str, str], state: _RequestState) -> dict[str, str]:
        forwarded = {k: v for k, v in headers.items() if k not in _DROP_REQUEST}
        forwarded["x-request-id"] = state.request_id
        forwarded["x-forwarded-for"] = state.client_ip
        return forwarded

    def _preflight(self, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        origin = headers.get("origin")
        if origin is None or origin not in self._cors_origins:
            raise Forbidden("this origin is not allowed (MESHOP_GATEWAY_CORS_ORIGINS)")
        allow = {
            "access-control-allow-methods": "GET, POST, PUT, PATCH, DELETE",
            "access-control-allow-headers": _CORS_ALLOW_HEADERS,
            "access-control-max-age": "600",
        }
        return 204, allow, b""

    def _call_options(
        self, rule: Rule, op: Operation[Any, Any], headers: dict[str, str], body: bytes | None
    ) -> CallOptions:
        """The mesh client's options for forwarding to `rule`'s service.

        A route that must not retry forwards a client's Idempotency-Key as a plain header.
        """
        key = headers.pop(IDEMPOTENCY_HEADER, None)
        timeout_s = rule.timeout_s or self._limits.timeout_s
        return CallOptions(
            body=body,
            headers=headers if rule.retry or key is None else {**headers, IDEMPOTENCY_HEADER: key},
            retry_safe=op.retry_safe and rule.retry,
            idempotency_key=key if rule.retry else None,
            deadline=_monotonic() + timeout_s,
            # The operation's policy; a route's own timeout is the call's deadline, longer than the policy's too.
            policy=self._client.policy(op, timeout_s=rule.timeout_s),
            subject=op.subject,
            route=op.path,
        )

    def _passed(self, answer: CallAnswer, path: str) -> tuple[int, dict[str, str], bytes]:
        """A service's answer as the gateway passes it on; a problem's `instance` is the public `path`."""
        out = {k: answer.headers[k] for k in _PASS_RESPONSE if k in answer.headers}
        if self._debug_headers:  # internal topology: only when asked for
            out["x-meshop-upstream"] = answer.instance.instance_id
            out["x-meshop-transport"] = "nats" if "meshop-status" in answer.headers else "http"
        body = answer.body
        if answer.status >= 400 and out.get("content-type", "").startswith(PROBLEM_CONTENT_TYPE):
            body = _public_instance(body, path)
        return answer.status, out, body


class _Forward:
    """What the pipeline forwards: to the route's service, with the mesh client's options."""

    __slots__ = ("cache_key", "method", "options", "rule", "target")

    def __init__(self, rule: Rule, method: str, target: str, options: CallOptions, cache_key: str | None) -> None:
        self.rule: Final = rule
        self.method: Final = method
        self.target: Final = target
        self.options: Final = options
        #: The key a public GET's answer is stored under (None: not cached).
        self.cache_key: Final = cache_key


class _Wait:
    """What the pipeline waits for (the general path awaits it and sends back the result)."""

    __slots__ = ()


class _Hit(_Wait):
    """A rate limit's decision, from a limiter kept outside this process."""

    __slots__ = ("key", "limit")

    def __init__(self, key: str, limit: Limit) -> None:
        self.key: Final = key
        self.limit: Final = limit


class _Verify(_Wait):
    """The identity of a token this process has not verified before."""

    __slots__ = ("authorization",)

    def __init__(self, authorization: str | None) -> None:
        self.authorization: Final = authorization


class _ReadBody(_Wait):
    """The request's body."""

    __slots__ = ()


_READ_BODY: Final = _ReadBody()


def _first(steps: Generator[T, Any, None]) -> T:
    """A generator's first value (a loop: compiled, `next()` is a builtin looked up and
    called through Python per use, where a loop takes the native generator's own slot)."""
    for step in steps:
        return step
    raise RuntimeError("the gateway's pipeline ended without an answer")


class _Lane:
    """One request the lane took: what its callbacks need to answer it."""

    __slots__ = (
        "answer",
        "answered",
        "forward",
        "headers",
        "proxy",
        "scope",
        "span",
        "started",
        "state",
        "traceparent",
    )

    def __init__(
        self,
        proxy: Proxy,
        scope: Scope,
        headers: dict[str, str],
        answer: Callable[[int, bytes, bytes], None],
        state: _RequestState,
        span: tracing.SpanRecord | None,
        started: float,
        traceparent: str,
    ) -> None:
        self.proxy = proxy
        self.scope = scope
        self.headers = headers
        self.answer = answer
        self.state = state
        self.span = span
        self.started = started
        self.traceparent = traceparent
        self.forward: _Forward | None = None
        self.answered = False

    def forwarded(self, result: CallAnswer | Exception) -> None:
        """The mesh client's callback: the service's answer, or why there is none."""
        assert self.forward is not None
        path = self.scope["path"]
        try:
            status, out, body = self.proxy._answered(self.forward, result, path)
        except ProblemError as exc:
            status, out, body = _problem(exc, path)
        except Exception:  # a bug: still a problem+json answer, and a log line to fix it from
            log.exception("gateway failed", path=path, request_id=self.state.request_id, **_trace(self.traceparent))
            status, out, body = _problem(InternalError("the gateway failed to handle this request"), path)
        self.respond(status, out, body)

    def respond(self, status: int, out: dict[str, str], body: bytes) -> None:
        """Answer, end the span, count the request."""
        if self.answered:  # once: a callback that raised after answering must not answer again
            return
        self.answered = True
        proxy, state = self.proxy, self.state
        try:
            proxy._finish_headers(out, self.headers, state)
            head = proxy._head(status, out, body, state)
        except Exception:  # a bug: still a problem+json answer, and a log line to fix it from
            log.exception(
                "gateway failed", path=self.scope["path"], request_id=state.request_id, **_trace(self.traceparent)
            )
            status, _, body = _problem(InternalError("the gateway failed to answer this request"), self.scope["path"])
            head = b"content-type: %s\r\ncontent-length: %d\r\n" % (PROBLEM_CONTENT_TYPE.encode(), len(body))
        self.answer(status, head, body)
        try:
            if proxy._metrics is not None:
                proxy._metrics.in_flight -= 1
            span = self.span
            if span is not None:
                proxy._annotate(span, self.scope["method"], status, state)
                tracing.end_span(span)
            proxy._count(self.scope, status, state, self.started, self.traceparent)
        except Exception:
            log.exception(
                "gateway failed to count a request",
                path=self.scope["path"],
                request_id=state.request_id,
                **_trace(self.traceparent),
            )


def _trace(traceparent: str) -> dict[str, str]:
    """A lane log line's trace fields, given: its callbacks run in no request's context."""
    return {"trace_id": traceparent[3:35], "span_id": traceparent[36:52]}


def _header_bytes(raw: list[tuple[bytes, bytes]]) -> int:
    """The request headers' size, names and values (a loop: `sum` is a builtin looked up per call)."""
    size = 0
    for name, value in raw:
        size += len(name) + len(value)
    return size


def _parent(headers: dict[str, str]) -> str | None:
    """The caller's trace to continue (recorded whatever its sampled flag), or None: a new one."""
    incoming = headers.get(tracecontext.HEADER)
    return incoming[:53] + "01" if incoming is not None and tracecontext.valid(incoming) else None


def _routed(state: _RequestState, rule: Rule, op: Operation[Any, Any]) -> None:
    state.service, state.route = rule.service, rule.prefix
    state.template = rule.prefix + op.path if op.path != "/" else rule.prefix


def _target(scope: Scope, rule: Rule, path: str) -> str:
    """The service-relative target: the path as the client encoded it (decoding and re-encoding
    is lossy: %2F), and the query."""
    raw: bytes = scope.get("raw_path") or b""  # typed: a native decode when compiled, not a method call
    raw_path = raw.decode("latin-1")
    forward = raw_path[len(rule.prefix) :] or "/" if raw_path.startswith(rule.prefix) else path
    query: bytes = scope.get("query_string", b"")
    return f"{forward}?{query.decode('latin-1')}" if query else forward


def _refusal(service: str, exc: TransportError | DeadlineExceeded, timeout_s: float) -> ProblemError:
    """What the client hears when the call failed before an answer."""
    if isinstance(exc, DeadlineExceeded):
        return GatewayTimeout(f"{service} did not answer within {timeout_s:g}s")
    if exc.sent:
        return GatewayTimeout(f"{service} did not answer in time")
    return ServiceUnavailable(f"{service} is unavailable", retry_after_s=1.0)


class _RequestState:
    """What the pipeline learns of one request as it goes (a plain class: see `Decision`)."""

    __slots__ = ("cache", "client_ip", "decision", "request_id", "route", "service", "template", "user_id")

    def __init__(self, request_id: str, client_ip: str) -> None:
        self.request_id = request_id
        self.client_ip = client_ip
        self.decision: Decision | None = None
        self.user_id: str | None = None
        self.service: str | None = None
        self.cache: str | None = None
        #: The route for metrics (never the raw path: its cardinality is unbounded).
        self.route = "unrouted"
        #: The operation's path template under the route (`/api/orders/{id}`), for the span.
        self.template = "unrouted"


def _admit(state: _RequestState, decision: Decision) -> None:
    """Count one limit's decision: 429 when refused; the tightest so far is the one reported."""
    if state.decision is None or decision.remaining < state.decision.remaining or not decision.allowed:
        state.decision = decision
    if not decision.allowed:
        raise TooManyRequests(
            f"rate limit {decision.limit} exceeded; retry in {decision.retry_after_s:.2f}s",
            headers=decision.headers(),
        )


def _public_instance(body: bytes, path: str) -> bytes:
    """A service's problem with the path the client asked for as its `instance` (the service
    names its own, without the route's prefix); anything else is passed on as it is.

    Only error answers are rewritten: a success costs nothing, where telling every service
    its public prefix would cost a header on every call.
    """
    try:
        problem = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return body
    if not isinstance(problem, dict) or "instance" not in problem:
        return body
    problem["instance"] = path
    return _encode(problem)


def _problem(error: ProblemError, path: str) -> tuple[int, dict[str, str], bytes]:
    headers = dict(error.headers) if error.headers else {}
    if error.retry_after_s is not None:
        headers["retry-after"] = str(max(1, round(error.retry_after_s)))
    headers["content-type"] = PROBLEM_CONTENT_TYPE
    return error.status, headers, _encode(error.to_problem(instance=path))


async def _read_body(receive: Receive, headers: dict[str, str], max_bytes: int) -> bytes:
    """The request body, or 413 as soon as it is known to exceed `max_bytes`."""
    length = headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > max_bytes:
        raise PayloadTooLarge(f"request body is larger than {max_bytes} bytes")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise BadRequest("the client went away before sending the whole body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > max_bytes:
            raise PayloadTooLarge(f"request body is larger than {max_bytes} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)
