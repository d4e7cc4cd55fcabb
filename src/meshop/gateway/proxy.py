"""The gateway's request pipeline: one public request, from the socket to a service and back.

header limits → per-address rate limit → route (routes file, then the service's contract)
→ authentication and roles → per-user and per-route rate limits → public GET cache →
body limit → the mesh client's resilience chain → response with security, CORS, request-id
and RateLimit headers → one JSON access-log line. Every refusal is problem+json.
"""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import structlog
from starlette.requests import Request
from starlette.responses import Response

from meshop.gateway.config import RouteRules, Rule
from meshop.gateway.routes import RouteTable
from meshop.mesh import tracecontext
from meshop.mesh.auth import Identity, TokenVerifier
from meshop.mesh.client import ServiceClient
from meshop.mesh.errors import (
    DeadlineExceeded,
    Forbidden,
    GatewayTimeout,
    HeadersTooLarge,
    InternalError,
    NotFound,
    ProblemError,
    ServiceUnavailable,
    TooManyRequests,
    TransportError,
)
from meshop.mesh.operation import Access, Operation
from meshop.mesh.ratelimit import Decision, Limit, Limiter
from meshop.mesh.routing import DEADLINE_HEADER, IDEMPOTENCY_HEADER, problem_response, read_body

access_log = structlog.get_logger("meshop.access")

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
_ACCESS_RANK = {Access.PUBLIC: 0, Access.USER: 1, Access.ADMIN: 2, Access.INTERNAL: 3}
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
        access_log_enabled: bool = True,
    ) -> None:
        self._client = client
        self._verifier = verifier
        self._limiter = limiter
        self.rules = rules
        self._limits = limits
        self._operations = RouteTable()
        self._cache = ResponseCache()
        self._cors_origins = cors_origins
        self._security = {**SECURITY_HEADERS, **({"strict-transport-security": "max-age=31536000"} if hsts else {})}
        self._debug_headers = debug_headers
        self._access_log = access_log_enabled

    async def handle(self, request: Request) -> Response:
        started = time.perf_counter()
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        # Continue the caller's trace, or start one: every call and event below carries it.
        incoming = request.headers.get(tracecontext.HEADER)
        traceparent = incoming if incoming is not None and tracecontext.valid(incoming) else tracecontext.start()
        tracecontext.set_current(traceparent)
        state = _RequestState(request_id=request_id)
        try:
            response = await self._handle(request, state)
        except ProblemError as exc:
            if exc.headers is None and state.decision is not None:
                exc.headers = state.decision.headers()
            response = problem_response(exc, instance=request.url.path)
        except Exception:  # a bug: still a problem+json answer, and a log line to fix it from
            access_log.exception("gateway failed", path=request.url.path, request_id=request_id)
            response = problem_response(InternalError("the gateway failed to handle this request"))
        headers = response.headers
        headers.update(self._security)
        headers["x-request-id"] = request_id
        if state.decision is not None and response.status_code != 429:
            headers.update(state.decision.headers())
        origin = request.headers.get("origin")
        if origin is not None and origin in self._cors_origins:
            headers["access-control-allow-origin"] = origin
            headers["access-control-expose-headers"] = _CORS_EXPOSE_HEADERS
            headers["vary"] = "Origin"
        if self._access_log:
            access_log.info(
                "access",
                method=request.method,
                path=request.url.path,
                status=response.status_code,
                duration_ms=round((time.perf_counter() - started) * 1000, 3),
                request_id=request_id,
                trace_id=traceparent[3:35],
                user_id=state.user_id,
                client=request.client.host if request.client else None,
                service=state.service,
                cache=state.cache,
            )
        return response

    async def _handle(self, request: Request, state: _RequestState) -> Response:
        raw_headers = request.headers.raw
        if sum(len(k) + len(v) for k, v in raw_headers) > self._limits.max_header_bytes:
            raise HeadersTooLarge(f"request headers exceed {self._limits.max_header_bytes} bytes")
        rules = self.rules
        client_ip = request.client.host if request.client else "unknown"
        if rules.per_ip is not None:
            await self._admit(state, f"ip:{client_ip}", rules.per_ip)
        method = request.method
        if method == "OPTIONS" and "access-control-request-method" in request.headers:
            return self._preflight(request)
        found = rules.match(request.url.path, method)
        if found is None:
            raise NotFound("no such route")
        rule, path = found
        state.service = rule.service
        op = self._operations.resolve(rule.service, method, path).operation
        access = op.access
        if rule.access is not None and _ACCESS_RANK[rule.access] > _ACCESS_RANK[access]:
            access = rule.access
        identity: Identity | None = None
        if access is not Access.PUBLIC:
            identity = await self._verifier.verify_header(request.headers.get("authorization"))
            state.user_id = identity.user_id
            if access is Access.ADMIN and not identity.is_admin:
                raise Forbidden("this route requires the admin role")
            if rules.per_user is not None:
                await self._admit(state, f"user:{identity.user_id}", rules.per_user)
        if rule.rate_limit is not None:
            who = f"user:{identity.user_id}" if identity else f"ip:{client_ip}"
            await self._admit(state, f"route:{rule.prefix}:{who}", rule.rate_limit)
        # Forward the path as the client encoded it (decoding and re-encoding is lossy: %2F).
        raw_path = request.scope.get("raw_path", b"").decode("latin-1")
        forward = raw_path[len(rule.prefix) :] or "/" if raw_path.startswith(rule.prefix) else path
        query = request.scope.get("query_string", b"").decode("latin-1")
        target = forward + (f"?{query}" if query else "")
        cache_key = None
        if method == "GET" and rule.cache_ttl_s > 0 and access is Access.PUBLIC:
            # Public answers only: nothing here depends on who asked.
            cache_key = f"{rule.service} {target}"
            cached = self._cache.get(cache_key, time.monotonic())
            if cached is not None:
                state.cache = "hit"
                age = str(int(time.monotonic() - cached.stored_at))
                return Response(cached.body, status_code=cached.status, headers={**cached.headers, "age": age})
            state.cache = "miss"
        body = await read_body(request, self._limits.max_body_bytes)
        headers = {k: v for k, v in request.headers.items() if k not in _DROP_REQUEST}
        headers["x-request-id"] = state.request_id
        headers["x-forwarded-for"] = client_ip
        response = await self._forward(rule, op, method, target, headers, body)
        if cache_key is not None and response.status_code == 200:
            now = time.monotonic()
            self._cache.put(
                cache_key,
                _Cached(
                    status=200,
                    body=bytes(response.body),
                    headers={k: v for k, v in response.headers.items() if k != "content-length"},
                    stored_at=now,
                    expires_at=now + rule.cache_ttl_s,
                ),
            )
        return response

    async def _admit(self, state: _RequestState, key: str, limit: Limit) -> None:
        decision = await self._limiter.hit(key, limit)
        # Report the tightest limit met so far (fewest remaining).
        if state.decision is None or decision.remaining < state.decision.remaining or not decision.allowed:
            state.decision = decision
        if not decision.allowed:
            raise TooManyRequests(
                f"rate limit {decision.limit} exceeded; retry in {decision.retry_after_s:.2f}s",
                headers=decision.headers(),
            )

    def _preflight(self, request: Request) -> Response:
        origin = request.headers.get("origin")
        if origin is None or origin not in self._cors_origins:
            raise Forbidden("this origin is not allowed (MESHOP_GATEWAY_CORS_ORIGINS)")
        return Response(
            status_code=204,
            headers={
                "access-control-allow-methods": "GET, POST, PUT, PATCH, DELETE",
                "access-control-allow-headers": _CORS_ALLOW_HEADERS,
                "access-control-max-age": "600",
            },
        )

    async def _forward(
        self, rule: Rule, op: Operation[Any, Any], method: str, target: str, headers: dict[str, str], body: bytes
    ) -> Response:
        key = headers.pop(IDEMPOTENCY_HEADER, None)
        timeout_s = rule.timeout_s or self._limits.timeout_s
        try:
            answer = await self._client.request(
                rule.service,
                method,
                target,
                body=body or None,
                headers=headers if rule.retry or key is None else {**headers, IDEMPOTENCY_HEADER: key},
                retry_safe=op.retry_safe and rule.retry,
                idempotency_key=key if rule.retry else None,
                deadline=time.monotonic() + timeout_s,
                subject=op.subject,
            )
        except TransportError as exc:
            if exc.sent:
                raise GatewayTimeout(f"{rule.service} did not answer in time") from None
            raise ServiceUnavailable(f"{rule.service} is unavailable", retry_after_s=1.0) from None
        except DeadlineExceeded:
            raise GatewayTimeout(f"{rule.service} did not answer within {timeout_s:g}s") from None
        out = {k: answer.headers[k] for k in _PASS_RESPONSE if k in answer.headers}
        if self._debug_headers:  # internal topology: only when asked for
            out["x-meshop-upstream"] = answer.instance.instance_id
            out["x-meshop-transport"] = "nats" if "meshop-status" in answer.headers else "http"
        return Response(answer.body, status_code=answer.status, headers=out)


@dataclass(slots=True)
class _RequestState:
    request_id: str
    decision: Decision | None = None
    user_id: str | None = None
    service: str | None = None
    cache: str | None = None
