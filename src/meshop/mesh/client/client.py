"""The service client: every call between processes goes through one resilience chain.

    fallback (optional, per call)
    └─ the chain (`chain`): deadline, retries, instance choice, bulkhead, per-try timeout,
       each try one exchange over HTTP or NATS (`meshop.mesh.transport.exchange`)

`ServiceClient` puts together what each part does:

- `targets`: what is kept per service called (policy, balancer, breakers, bulkhead, budget);
- `health`: which instances may be sent to (breakers, outliers, active checks, panic mode);
- `picking`: the instance each try goes to, in the caller's zone first;
- `chain`: a call's tries, awaited in a coroutine; `callbacks`: the same chain driven by
  callbacks (the gateway's lane);
- `decoding`: typed calls' answers, decoded or rebuilt into the peer's error.

Errors come back typed: a problem+json answer is rebuilt into the `ProblemError` the
peer raised; a failure before an answer is a `TransportError` (with `sent` telling
whether the request may have reached the peer). Local rejections (bulkhead full, every
breaker open, deadline spent) are never retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from typing import Any, Literal, TypeVar

import msgspec
from nats.aio.client import Client as NatsClient

from meshop.mesh.api.operation import Access, Operation
from meshop.mesh.client.callbacks import Callbacks, Done
from meshop.mesh.client.chain import Answer, Call, CallOptions, Chain, outcome
from meshop.mesh.client.decoding import decode
from meshop.mesh.client.health import Health
from meshop.mesh.client.picking import Picker, Unavailable
from meshop.mesh.client.targets import Target, Targets
from meshop.mesh.client.zones import Locality
from meshop.mesh.errors import MeshError
from meshop.mesh.headers import IDENTITY_HEADER
from meshop.mesh.registry.base import Instance, Registry
from meshop.mesh.resilience import CallPolicy, CircuitBreaker
from meshop.mesh.resilience.config import Policies
from meshop.mesh.security.identity import TokenMinter
from meshop.mesh.telemetry import tracecontext, tracing
from meshop.mesh.telemetry.metrics import Metrics
from meshop.mesh.telemetry.tracing import SpanKind
from meshop.mesh.transport.exchange import Exchange
from meshop.mesh.transport.http_client import HttpExchange, HttpPool, Transport
from meshop.mesh.transport.nats import NatsExchange

__all__ = ["Answer", "CallOptions", "ServiceClient", "Target", "Unavailable"]

Resp = TypeVar("Resp")
Clock = Callable[[], float]

_encoder = msgspec.json.Encoder()


class ServiceClient:
    """Calls other services' operations through the resilience chain.

    `http` carries HTTP tries and health checks (default: an `HttpPool`); with `nc`, an
    operation whose policy says `transport = "nats"` is called over NATS. `exchange` and
    `nats` replace either transport with any other `Exchange` (a test's in-memory one:
    `meshop.mesh.testing.MemoryExchange`). `locality` makes the client prefer instances
    in its own zone.
    """

    def __init__(
        self,
        registry: Registry,
        *,
        policies: Policies | None = None,
        timeout_s: float | None = None,
        clock: Clock = time.monotonic,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        nc: NatsClient | None = None,
        http: Transport | None = None,
        exchange: Exchange | None = None,
        nats: Exchange | None = None,
        locality: Locality | None = None,
    ) -> None:
        policies = policies or Policies()
        if timeout_s is not None:
            policies.override_default(_with_timeout(policies.default, timeout_s))
        rng = rng or random.Random()
        self._registry = registry
        self._http: Transport = http or HttpPool()
        self._targets = Targets(policies, clock=clock, rng=rng)
        self._health = Health(registry, self._targets, self._http)
        self._picker = Picker(self._health, locality=locality, rng=rng)
        self._chain = Chain(
            registry,
            self._targets,
            self._picker,
            default=exchange or HttpExchange(self._http),
            nats=nats or (NatsExchange(nc) if nc is not None else None),
            clock=clock,
            rng=rng,
            sleep=sleep,
        )
        self._callbacks = Callbacks(self._chain)
        #: This service's identity, sent on calls to INTERNAL operations (none: they are refused).
        self.identity: TokenMinter | None = None

    @property
    def policies(self) -> Policies:
        return self._targets.policies

    @property
    def locality(self) -> Locality | None:
        """Where this caller runs: set, it prefers instances in its own zone (mesh/client/zones.py)."""
        return self._picker.locality

    @property
    def metrics(self) -> Metrics | None:
        """Calls by target and outcome, when the process keeps metrics."""
        return self._chain.metrics

    @metrics.setter
    def metrics(self, metrics: Metrics | None) -> None:
        self._chain.metrics = metrics

    async def close(self) -> None:
        await self._http.close()

    def targets(self) -> dict[str, Target]:
        """The services this client has called, with their balancer, breakers and budget."""
        return self._targets.snapshot()

    def target(self, service: str) -> Target:
        return self._targets.get(service)

    def policy(self, op: Operation[Any, Any], *, timeout_s: float | None = None) -> CallPolicy:
        """The policy of a call to `op`; with `timeout_s`, a gateway route's own deadline."""
        return self._targets.policy(op, timeout_s)

    def breaker(self, service: str, instance_id: str) -> CircuitBreaker:
        return self._targets.breaker(self._targets.get(service), instance_id)

    def healthy(self, service: str) -> list[Instance]:
        """Registered instances whose breaker admits calls and that are not ejected."""
        return self._health.healthy(self._targets.get(service), self._registry.instances(service))

    async def check_health(self, *, timeout_s: float = 1.0) -> None:
        """Actively check `/ready` of every instance of every service this client calls."""
        await self._health.check(timeout_s=timeout_s)

    async def check_health_forever(self, *, interval_s: float = 2.0) -> None:
        """Run `check_health` every `interval_s` (a background task of the process)."""
        await self._health.check_forever(interval_s=interval_s)

    def pick(self, service: str, *, key: str | None = None, exclude: frozenset[str] = frozenset()) -> Instance:
        """Choose the instance the next request to `service` goes to."""
        return self._picker.pick(service, self._targets.get(service), self._registry.instances(service), key, exclude)

    async def request(
        self,
        service: str,
        method: str,
        path: str,
        options: CallOptions,
        *,
        operation: str | None = None,
        caller_span: tracing.SpanRecord | None = None,
    ) -> Answer:
        """One logical request through the chain: one client span, counted in the metrics.

        The span (named after `operation` when given) covers every try; each try, retry and
        breaker refusal is an event on it. A 4xx is the callee's answer, not a failure.

        With `caller_span` (the current span, recorded), the call opens no span of its own:
        its tries are events on the caller's, whose traceparent the callee gets. That is a
        proxy's one span per request (Envoy's default; docs/decisions/0015).
        """
        chain = self._chain
        scope = (
            tracing.span(
                operation or f"{service} {method}",
                SpanKind.CLIENT,
                attributes=_span_attributes(service, method, path),
                root=False,
            )
            if caller_span is None
            else contextlib.nullcontext(None)
        )
        with scope as span:
            started = chain.clock()
            result: Answer | BaseException | None = None
            try:
                call = Call(
                    chain,
                    service,
                    method,
                    path,
                    options,
                    traceparent=tracecontext.current(),
                    recording=span or caller_span,
                )
                result = await chain.run(call)
                return result
            except BaseException as exc:
                result = exc
                raise
            finally:
                chain.record(service, span, chain.clock() - started, outcome(result))

    def start(
        self,
        service: str,
        method: str,
        path: str,
        done: Done,
        options: CallOptions,
        *,
        traceparent: str | None,
        operation: str | None = None,
        caller_span: tracing.SpanRecord | None = None,
    ) -> None:
        """`request` driven by callbacks: `done` gets the answer, or the chain's error, exactly once.

        For a caller that has no task to await in (the gateway's lane). `traceparent` is
        the caller's span's: this call's span is its child, or with `caller_span` (that
        span's record) there is none and the tries are events on the caller's, as in
        `request`. `done` must not raise.
        """
        attributes = _span_attributes(service, method, path) if caller_span is None else _NO_ATTRIBUTES
        self._callbacks.start(
            service,
            method,
            path,
            done,
            options,
            traceparent=traceparent,
            operation=operation,
            caller_span=caller_span,
            attributes=attributes,
        )

    async def call(
        self,
        op: Operation[Any, Resp],
        body: Any = None,
        *,
        path_params: Mapping[str, Any] | None = None,
        query: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
        token: str | None = None,
        timeout_s: float | None = None,
        deadline: float | None = None,
        hash_key: str | None = None,
        fallback: Callable[[MeshError], Awaitable[Resp]] | None = None,
        transport: Literal["http", "nats"] | None = None,
    ) -> Resp:
        """Call `op` on one instance of its service and return the decoded response.

        `deadline` is a `time.monotonic()` instant (e.g. the incoming request's).
        `fallback`, when given, turns any failure of the whole chain into a value.
        """
        if op.requires_key and not idempotency_key:
            raise ValueError(f"{op.qualified} requires an idempotency key")
        policy = self._targets.policy(op)
        if timeout_s is not None:
            policy = _with_timeout(policy, timeout_s)
        headers: dict[str, str] = {}
        if op.request is not None:
            headers["content-type"] = "application/json"
        if token:
            headers["authorization"] = f"Bearer {token}"
        if op.access is Access.INTERNAL and self.identity is not None:
            headers[IDENTITY_HEADER] = self.identity.header(op.service)
        path = op.render_path(path_params)
        if query:
            from urllib.parse import urlencode

            path += "?" + urlencode(query)
        try:
            options = CallOptions(
                body=_encoder.encode(body) if op.request is not None else None,
                headers=headers,
                retry_safe=op.retry_safe,
                idempotency_key=idempotency_key,
                policy=policy,
                deadline=deadline,
                hash_key=hash_key,
                subject=op.subject,
                route=op.path,
                transport=transport,
            )
            answer = await self.request(op.service, op.method, path, options, operation=op.qualified)
            return decode(op, answer)
        except MeshError as exc:
            if fallback is None:
                raise
            return await fallback(exc)


_NO_ATTRIBUTES: dict[str, tracing.AttributeValue] = {}


def _with_timeout(policy: CallPolicy, timeout_s: float) -> CallPolicy:
    return replace(policy, timeout_s=timeout_s, per_try_timeout_s=min(policy.per_try_timeout_s, timeout_s))


def _span_attributes(service: str, method: str, path: str) -> dict[str, tracing.AttributeValue]:
    """A call span's attributes (the path without its query)."""
    return {"peer.service": service, "http.request.method": method, "url.path": path.partition("?")[0]}
