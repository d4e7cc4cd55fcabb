"""The service client: every call between processes goes through one resilience chain.

    fallback (optional, per call)
    └─ deadline: overall budget; downstream gets the remainder in a header
       └─ retry: only retryable failures of retry-safe calls, full-jitter backoff,
          a retry budget, never with too little deadline left; a new instance each time
          └─ instance choice: the balancer over instances whose breaker is not open and
             that are not ejected as outliers
             └─ bulkhead: bounded in-flight calls per service (overflow: 503, local)
                └─ per-try timeout → one HTTP exchange

Errors come back typed: a problem+json answer is rebuilt into the `ProblemError` the
peer raised; a failure before an answer is a `TransportError` (with `sent` telling
whether the request may have reached the peer). Local rejections (bulkhead full, every
breaker open, deadline spent) are never retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final, Literal, TypeVar

import msgspec
import nats.errors
import structlog
from nats.aio.client import Client as NatsClient

from meshop.mesh.api.operation import Access, Operation
from meshop.mesh.api.routing import DEADLINE_HEADER, IDEMPOTENCY_HEADER
from meshop.mesh.client.balancing import Balancer, make_balancer
from meshop.mesh.client.zones import Locality, prefer_zone
from meshop.mesh.errors import (
    PROBLEM_CONTENT_TYPE,
    BadGateway,
    DeadlineExceeded,
    MeshError,
    NoInstancesError,
    Problem,
    ServiceUnavailable,
    TransportError,
    error_from_problem,
)
from meshop.mesh.registry.base import Instance, Registry, forget_departed
from meshop.mesh.resilience import (
    Bulkhead,
    BulkheadFull,
    CallPolicy,
    CircuitBreaker,
    OutlierDetector,
    RetryBudget,
    backoff_s,
)
from meshop.mesh.resilience.config import Policies
from meshop.mesh.security.identity import IDENTITY_HEADER, TokenMinter
from meshop.mesh.telemetry import tracecontext, tracing
from meshop.mesh.telemetry.metrics import Metrics
from meshop.mesh.telemetry.tracing import SpanKind
from meshop.mesh.transport.http_client import HttpError, HttpPool, Reply, Transport
from meshop.mesh.transport.nats import PATH_HEADER, Requests, answer_of

Resp = TypeVar("Resp")
Clock = Callable[[], float]
log = structlog.get_logger("meshop.client")

_encoder = msgspec.json.Encoder()
_problem = msgspec.json.Decoder(Problem)
_RETRY_STATUSES = frozenset({429, 503})
# Module-level Finals are C statics when compiled; `time.x()` looks `x` up on the module per call (~270 instructions).
_time_ns: Final = time.time_ns


class Unavailable(ServiceUnavailable):
    """A local rejection: every instance of the service is ejected or has its breaker open."""

    slug = "no-healthy-instance"
    retryable = False


class Answer:
    """A raw HTTP answer from one instance.

    A plain class, not a dataclass: compiled (decision 0014), its `__init__` is native code,
    where a dataclass's generated one stays interpreted; and one is made per call.
    """

    __slots__ = ("body", "headers", "instance", "status")

    def __init__(self, status: int, headers: Mapping[str, str], body: bytes, instance: Instance) -> None:
        self.status: Final = status
        self.headers: Final = headers
        self.body: Final = body
        self.instance: Final = instance

    def __repr__(self) -> str:
        return f"Answer(status={self.status}, instance={self.instance.instance_id}, {len(self.body)} bytes)"


class CallOptions:
    """How one logical request is made (`ServiceClient.request` and `start`).

    `retry_safe`: a retry cannot cause a second effect (an idempotency key makes any
    request so); `policy` replaces the target's; `deadline` is a `time.monotonic()`
    instant; `hash_key` steers a consistent-hash balancer; `subject`, the operation's NATS
    subject, is used when the transport (`transport`, else the policy's) is `nats`, and
    `route`, the operation's path template, is the path a NATS request need not name.
    A plain class: see `Answer`.
    """

    __slots__ = (
        "body",
        "deadline",
        "hash_key",
        "headers",
        "idempotency_key",
        "policy",
        "retry_safe",
        "route",
        "subject",
        "transport",
    )

    def __init__(
        self,
        *,
        retry_safe: bool,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
        policy: CallPolicy | None = None,
        deadline: float | None = None,
        hash_key: str | None = None,
        subject: str | None = None,
        route: str | None = None,
        transport: Literal["http", "nats"] | None = None,
    ) -> None:
        self.retry_safe: Final = retry_safe
        self.body: Final = body
        self.headers: Final = headers
        self.idempotency_key: Final = idempotency_key
        self.policy: Final = policy
        self.deadline: Final = deadline
        self.hash_key: Final = hash_key
        self.subject: Final = subject
        self.route: Final = route
        self.transport: Final = transport


@dataclass
class Target:
    """What the client keeps per target service: balancer, breakers, bulkhead, budget."""

    policy: CallPolicy
    balancer: Balancer
    bulkhead: Bulkhead
    budget: RetryBudget
    outliers: OutlierDetector
    breakers: dict[str, CircuitBreaker] = field(default_factory=dict)
    #: Picks of an instance in the caller's zone and elsewhere (zone-aware clients only).
    local_picks: int = 0
    remote_picks: int = 0


class _Call:
    """One logical request in the chain: what its tries share, and the two steps around each try.

    `begin` (the deadline, an instance through balancer and breaker, the try's headers) and
    `end` (the try recorded in balancer, breaker and outlier detector; a retry decided) are
    synchronous: a try between them may be a coroutine (`ServiceClient._run`) or callbacks,
    and every path makes it through the same chain.
    """

    __slots__ = (
        "attempt",
        "begun",
        "body",
        "client",
        "deadline",
        "done",
        "hash_key",
        "headers",
        "may_retry",
        "method",
        "nats_path",
        "path",
        "policy",
        "recording",
        "service",
        "span",
        "started",
        "subject",
        "target",
        "tried",
        "try_started",
    )

    def __init__(
        self,
        client: ServiceClient,
        service: str,
        target: Target,
        policy: CallPolicy,
        method: str,
        path: str,
        body: bytes | None,
        headers: dict[str, str],
        may_retry: bool,
        deadline: float,
        hash_key: str | None,
        subject: str | None,
        route: str | None,
        recording: tracing.SpanRecord | None,
    ) -> None:
        self.client = client
        self.service = service
        self.target = target
        self.policy = policy
        self.method = method
        self.path = path
        self.body = body
        self.headers = headers
        self.may_retry = may_retry
        self.deadline = deadline
        self.hash_key = hash_key
        #: The NATS subject each try is sent to; None: an HTTP exchange.
        self.subject = subject
        #: The path a NATS request names; None: the operation's own (`route`), which it need not.
        self.nats_path = None if path == route else path
        #: The client span, if it records: events are added to it only then.
        self.recording = recording
        self.tried: set[str] = set()
        self.attempt = 0
        # A call driven by callbacks (`ServiceClient.start`): who gets its result, its span
        # (ended with it), when it and its try in flight (`begun`) started.
        self.done: Callable[[Answer | Exception], None] | None = None
        self.span: tracing.SpanRecord | None = None
        self.started = self.try_started = 0.0
        self.begun: tuple[Instance, CircuitBreaker, dict[str, str], float] | None = None

    def begin(self) -> tuple[Instance, CircuitBreaker, dict[str, str], float]:
        """The next try: its instance and breaker, the headers to send, and its timeout.

        Raises `DeadlineExceeded` when no time is left, `Unavailable` or `NoInstancesError`
        when no instance can be tried.
        """
        client, target, service = self.client, self.target, self.service
        while True:
            remaining = self.deadline - client._clock()
            if remaining <= 0:
                raise DeadlineExceeded(f"deadline spent before calling {service}")
            instance = client._pick(service, target, client._registry.instances(service), self.hash_key, self.tried)
            instance_id = instance.instance_id
            breaker = target.breakers.get(instance_id) or client.breaker(service, instance_id)
            if breaker.allow():
                break
            if self.recording is not None:  # lost a race for the last half-open probe
                self.recording.add_event("breaker.refused", {"instance": instance_id, "state": breaker.state.value})
            self.tried.add(instance_id)
        headers = self.headers
        if self.attempt or self.tried:  # each try its own headers (a transport may keep them)
            headers = self.headers = dict(headers)
        headers[DEADLINE_HEADER] = str(int(remaining * 1000))
        return instance, breaker, headers, min(self.policy.per_try_timeout_s, remaining)

    def _instance_ids(self) -> list[str]:
        """The service's instances, as the outlier detector asks for them (a method: a lambda
        in `end` would make a compiled closure's environment on every call)."""
        return [i.instance_id for i in self.client._registry.instances(self.service)]

    def end(
        self,
        instance: Instance,
        breaker: CircuitBreaker,
        started: float,
        error: TransportError | None,
        answer: Answer | None,
        *,
        ended: float | None = None,
        ended_ns: int = 0,
    ) -> Answer | float:
        """Record a try that began at `started` (and ended at `ended` and `ended_ns`, by the
        client's clock and the epoch; None and 0: now): the final answer, or the delay before
        the next try.

        Raises the try's `TransportError` when it is final.
        """
        client, target, policy = self.client, self.target, self.policy
        duration = (client._clock() if ended is None else ended) - started
        failed = error is not None or (answer is not None and answer.status >= 500)
        instance_id = instance.instance_id
        target.balancer.finished(instance, duration, ok=not failed)
        before = breaker.state
        breaker.record(failed=failed, duration_s=duration)
        recording = self.recording
        if recording is not None:
            # `add_event`'s work, without a call into the interpreted SpanRecord
            recording.events.append(
                (
                    "try",
                    ended_ns or _time_ns(),
                    {
                        "instance": instance_id,
                        "transport": "nats" if self.subject is not None else "http",
                        "result": type(error).__name__ if error is not None else answer.status if answer else 0,
                        "duration_ms": int(duration * 1_000_000 + 0.5) / 1000,  # to the µs, without round()'s cost
                    },
                )
            )
            if breaker.state is not before:
                recording.add_event("breaker." + breaker.state.value, {"instance": instance_id})
        if failed:
            target.outliers.record(instance_id, failed=True, pool=self._instance_ids)
        else:
            target.outliers.succeeded(instance_id)
        if not failed and answer is not None and answer.status not in _RETRY_STATUSES:
            return answer  # the common case: an answer that is not worth a retry
        if not client._retryable(error, answer, self.may_retry):
            return _finish(error, answer)
        self.attempt += 1
        if self.attempt >= policy.retry.attempts or not target.budget.try_retry():
            return _finish(error, answer)
        delay = backoff_s(policy.retry, self.attempt - 1, client._rng)
        if answer is not None and (retry_after := _retry_after_s(answer.headers)) is not None:
            delay = max(delay, retry_after)
        if self.deadline - client._clock() - delay < policy.retry.min_remaining_s:
            return _finish(error, answer)
        if recording is not None:
            recording.add_event("retry", {"attempt": self.attempt, "delay_ms": round(delay * 1000, 3)})
        self.tried.add(instance_id)
        return delay

    def deliver(self, result: Answer | Exception) -> tuple[float, int]:
        """Hand the call's outcome to its caller, once; when (the client's clock, epoch ns if recorded)."""
        ended = self.client._clock()
        ended_ns = _time_ns() if self.span is not None else 0
        done, self.done = self.done, None
        assert done is not None
        done(result)
        return ended, ended_ns

    def answered(self, result: Reply | Exception) -> None:
        """The HTTP pool's callback for the try `ServiceClient.start` sent: end it, then settle or retry."""
        client = self.client
        self.target.bulkhead.release()
        assert self.begun is not None
        instance, breaker, _, timeout_s = self.begun
        self.begun = None
        if (
            isinstance(result, Reply)
            and result.status < 500
            and result.status not in _RETRY_STATUSES
            and (self.span is not None or self.recording is None)
        ):
            # Final whatever `end` records (no retry follows such an answer): the caller hears
            # first, and the try and the call are recorded after, timed before it heard. Not
            # when they are recorded on the caller's span (it may end that span as it hears):
            # then the path below records the try first.
            answer = Answer(result.status, result.headers, result.body, instance)
            ended, ended_ns = self.deliver(answer)
            try:
                self.end(instance, breaker, self.try_started, None, answer, ended=ended, ended_ns=ended_ns)
                client._close(self, answer, ended, ended_ns)
            except Exception:  # a bug: the caller has its answer; it must not break the connection
                log.exception("recording a call failed", service=self.service)
            return
        try:
            if isinstance(result, Reply):
                answer = Answer(result.status, result.headers, result.body, instance)
                step = self.end(instance, breaker, self.try_started, None, answer)
            else:
                step = self.end(
                    instance, breaker, self.try_started, _transport_error(instance, result, timeout_s), None
                )
        except Exception as exc:  # the try's error, final
            client._settle(self, exc)
            return
        if isinstance(step, Answer):
            client._settle(self, step)
        else:  # a retry, after a delay: as a task
            client._continue_as_task(self, None, step)


class ServiceClient:
    """Calls other services' operations through the resilience chain."""

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
        locality: Locality | None = None,
    ) -> None:
        self._registry = registry
        #: Where this caller runs: set, it prefers instances in its own zone (mesh/client/zones.py).
        self.locality = locality
        self._nc = nc
        self._nats = Requests(nc) if nc is not None else None
        #: The transport of calls and of health checks.
        self._http: Transport = http or HttpPool()
        self.policies = policies or Policies()
        if timeout_s is not None:
            self.policies.override_default(_with_timeout(self.policies.default, timeout_s))
        self._clock = clock
        self._rng = rng or random.Random()
        self._sleep = sleep
        self._targets: dict[str, Target] = {}
        self._policies: dict[tuple[str, float | None], CallPolicy] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        #: Calls by target and outcome, when the process keeps metrics.
        self.metrics: Metrics | None = None
        #: This service's identity, sent on calls to INTERNAL operations (none: they are refused).
        self.identity: TokenMinter | None = None

    async def close(self) -> None:
        await self._http.close()

    def targets(self) -> dict[str, Target]:
        """The services this client has called, with their balancer, breakers and budget."""
        return dict(self._targets)

    def target(self, service: str) -> Target:
        found = self._targets.get(service)
        if found is None:
            policy = self.policies.for_operation(service, None)
            found = self._targets[service] = Target(
                policy=policy,
                balancer=make_balancer(policy.balancer, clock=self._clock, rng=self._rng),
                bulkhead=Bulkhead(policy.bulkhead),
                budget=RetryBudget(policy.retry, clock=self._clock),
                outliers=OutlierDetector(policy.outlier, clock=self._clock),
            )
        return found

    def policy(self, op: Operation[Any, Any], timeout_s: float | None = None) -> CallPolicy:
        """The policy of a call to `op`; with `timeout_s`, a gateway route's own deadline.

        A route's timeout shorter than the policy's cuts each try at it too. A longer one:
        whoever set it asks for a slow operation to be waited for, so one try may take all of it.
        """
        key = (op.subject, timeout_s)
        found = self._policies.get(key)
        if found is None:
            found = self.policies.for_operation(op.service, op.name, per_try_timeout_s=op.per_try_timeout_s)
            if timeout_s is not None:
                per_try = timeout_s if timeout_s > found.timeout_s else min(found.per_try_timeout_s, timeout_s)
                found = replace(found, timeout_s=timeout_s, per_try_timeout_s=per_try)
            self._policies[key] = found
        return found

    def breaker(self, service: str, instance_id: str) -> CircuitBreaker:
        target = self.target(service)
        found = target.breakers.get(instance_id)
        if found is None:
            found = target.breakers[instance_id] = CircuitBreaker(target.policy.breaker, clock=self._clock)
        return found

    def healthy(self, service: str) -> list[Instance]:
        """Registered instances whose breaker admits calls and that are not ejected."""
        return self._healthy(service, self.target(service), self._registry.instances(service))

    def _healthy(self, service: str, target: Target, registered: Sequence[Instance]) -> list[Instance]:
        breakers = target.breakers
        available = []
        healthy = []
        for i in registered:
            breaker = breakers.get(i.instance_id) or self.breaker(service, i.instance_id)
            if breaker.available():
                available.append(i)
                if not target.outliers.ejected(i.instance_id):
                    healthy.append(i)
        if len(healthy) < (1 - target.policy.outlier.max_ejected_fraction) * len(registered):
            return available  # panic: too many look unhealthy; better all than too few
        return healthy

    async def check_health(self, *, timeout_s: float = 1.0) -> None:
        """Actively check `/ready` of every instance of every service this client calls."""

        async def check(target: Target, instance: Instance) -> None:
            try:
                reply = await self._http.request(instance.address, instance.port, "GET", "/ready", {}, None, timeout_s)
                ready = reply.status == 200
            except (HttpError, TimeoutError):
                ready = False
            except Exception:  # a bug, or an error no transport maps: says nothing of the instance
                log.exception("health check failed", service=instance.service, instance=instance.instance_id)
                return  # and must not end the checks of the others, or `check_health_forever`
            target.outliers.checked(instance.instance_id, ready=ready)

        await asyncio.gather(
            *(check(target, i) for service, target in self._targets.items() for i in self._registry.instances(service))
        )

    async def check_health_forever(self, *, interval_s: float = 2.0) -> None:
        """Run `check_health` every `interval_s` (a background task of the process)."""
        while True:
            await self.check_health()
            await asyncio.sleep(interval_s)

    def pick(self, service: str, *, key: str | None = None, exclude: frozenset[str] = frozenset()) -> Instance:
        """Choose the instance the next request to `service` goes to."""
        return self._pick(service, self.target(service), self._registry.instances(service), key, exclude)

    def _pick(
        self,
        service: str,
        target: Target,
        registered: Sequence[Instance],
        key: str | None,
        exclude: Collection[str],
    ) -> Instance:
        if not registered:
            raise NoInstancesError(f"no instance of {service!r} is registered")
        candidates = healthy = self._healthy(service, target, registered)
        if exclude:
            candidates = [i for i in healthy if i.instance_id not in exclude] or healthy
        if not candidates:
            raise Unavailable(
                f"every instance of {service!r} is unavailable (breaker open or ejected)", retry_after_s=1.0
            )
        if len(target.breakers) > 2 * len(registered) + 8:
            self._forget_departed(target, registered)
        locality = self.locality
        if locality is None:
            return target.balancer.pick(candidates, key=key)
        balancer = target.balancer
        choice = balancer.pick(prefer_zone(locality, candidates, registered, balancer.outstanding, self._rng), key=key)
        if choice.zone == locality.zone:
            target.local_picks += 1
        else:
            target.remote_picks += 1
        return choice

    @staticmethod
    def _forget_departed(target: Target, registered: Sequence[Instance]) -> None:
        """Drop what is kept of instances no longer registered: every process that ever
        served (a restarted one is a new instance) would otherwise stay in each caller."""
        alive = {i.instance_id for i in registered}
        forget_departed(target.breakers, alive)
        target.outliers.forget(alive)
        target.balancer.forget(alive)

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
        """One logical request through the chain (see `_Call`): one client span, counted in the metrics.

        The span (named after `operation` when given) covers every try; each try, retry and
        breaker refusal is an event on it. A 4xx is the callee's answer, not a failure.

        With `caller_span` (the current span, recorded), the call opens no span of its own:
        its tries are events on the caller's, whose traceparent the callee gets. That is a
        proxy's one span per request (Envoy's default; docs/decisions/0015).
        """
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
            started = self._clock()
            result: Answer | BaseException | None = None
            try:
                recording = span or caller_span
                call = self._call(
                    service, method, path, options, traceparent=tracecontext.current(), recording=recording
                )
                result = await self._run(call)
                return result
            except BaseException as exc:
                result = exc
                raise
            finally:
                self._record(service, span, self._clock() - started, _outcome(result))

    def start(
        self,
        service: str,
        method: str,
        path: str,
        done: Callable[[Answer | Exception], None],
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
        `request`. A try goes out at once on an
        idle pooled connection and its answer comes back through a callback; whatever must
        wait (a connection to make, a full bulkhead, a retry's back-off, a NATS request)
        continues as a task, through the same chain (`_Call`). `done` must not raise.
        """
        span: tracing.SpanRecord | None = None
        if caller_span is None:
            span, traceparent = tracing.open_span(
                operation or f"{service} {method}",
                SpanKind.CLIENT,
                parent=traceparent,
                attributes=_span_attributes(service, method, path),
                root=False,
            )
        call = self._call(service, method, path, options, traceparent=traceparent, recording=span or caller_span)
        call.done, call.span, call.started = done, span, self._clock()
        try:
            begun = call.begin()
        except Exception as exc:  # deadline spent, no instance to try
            self._settle(call, exc)
            return
        instance, _, try_headers, timeout_s = begun
        target = call.target
        if call.subject is None and target.bulkhead.try_acquire():
            call.begun, call.try_started = begun, self._clock()
            try:
                sent = self._http.send(
                    instance.address,
                    instance.port,
                    call.method,
                    call.path,
                    try_headers,
                    call.body,
                    timeout_s,
                    call.answered,
                )
            except Exception as exc:  # a header that cannot be sent (a line break in it)
                target.bulkhead.release()
                self._settle(call, exc)
                return
            if sent:
                target.balancer.started(instance)
                return
            target.bulkhead.release()  # no idle connection: the task connects
        self._continue_as_task(call, begun, None)

    async def _continue(
        self, call: _Call, begun: tuple[Instance, CircuitBreaker, dict[str, str], float] | None, delay: float | None
    ) -> None:
        """The rest of a `start`ed call as a coroutine: from a try begun, or after a retry's delay."""
        try:
            if delay is not None:
                await self._sleep(delay)
            answer = await self._run(call, begun)
        except asyncio.CancelledError:
            self._settle(call, TransportError(f"the call to {call.service} was cancelled", sent=True))
            raise
        except Exception as exc:
            self._settle(call, exc)
        else:
            self._settle(call, answer)

    def _settle(self, call: _Call, result: Answer | Exception) -> None:
        """A `start`ed call is over: its caller's callback first, then its metrics and span."""
        ended, ended_ns = call.deliver(result)
        try:
            self._close(call, result, ended, ended_ns)
        except Exception:  # a bug: the caller has its answer; it must not break the connection or task
            log.exception("recording a call failed", service=call.service)

    def _close(self, call: _Call, result: Answer | Exception, ended: float, ended_ns: int) -> None:
        """Record a settled call: its metrics and span, timed when it settled (`ended`, `ended_ns`)."""
        span = call.span
        self._record(call.service, span, ended - call.started, _outcome(result))
        if span is not None:
            if isinstance(result, Exception) and not span.error:  # a local rejection too, as `span()` marks it
                tracing.fail(span, repr(result)[:200])
            tracing.end_span(span, ended_ns)

    def _record(self, service: str, span: tracing.SpanRecord | None, seconds: float, outcome: str) -> None:
        if span is not None:
            span.attributes["meshop.outcome"] = outcome
            if outcome in ("5xx", "transport_error"):
                tracing.fail(span, outcome)
        if self.metrics is not None:
            self.metrics.observe_call(service, outcome, seconds)

    def _continue_as_task(
        self, call: _Call, begun: tuple[Instance, CircuitBreaker, dict[str, str], float] | None, delay: float | None
    ) -> None:
        """Go on with a `start`ed call in a task (`_continue`)."""
        task = asyncio.get_running_loop().create_task(self._continue(call, begun, delay))
        self._tasks.add(task)  # referenced until done: the loop keeps only weak references
        task.add_done_callback(functools.partial(self._task_done, call))

    def _task_done(self, call: _Call, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if call.done is not None:  # cancelled before its first step: `_continue`'s handlers never ran
            self._settle(call, TransportError(f"the call to {call.service} was cancelled", sent=True))

    def _call(
        self,
        service: str,
        method: str,
        path: str,
        options: CallOptions,
        *,
        traceparent: str | None,
        recording: tracing.SpanRecord | None,
    ) -> _Call:
        """A logical request's state, counted against the retry budget; `traceparent` goes to the callee.

        With a NATS `subject` (the operation's) and a policy whose transport is `nats`,
        each try is a NATS request to the chosen instance instead of an HTTP exchange.
        """
        target = self._targets.get(service) or self.target(service)
        policy = options.policy or target.policy
        end = self._clock() + policy.timeout_s
        deadline, key, subject = options.deadline, options.idempotency_key, options.subject
        transport = options.transport or policy.transport
        if deadline is not None and deadline < end:
            end = deadline
        target.budget.request()
        # The headers every try sends; the deadline header is set per try (what is left).
        sent = {**options.headers} if options.headers else {}
        if traceparent is not None:  # the client span's: the callee's parent
            sent[tracecontext.HEADER] = traceparent
        if key:
            sent[IDEMPOTENCY_HEADER] = key
        use_nats = transport == "nats" and subject is not None and self._nc is not None
        return _Call(
            self,
            service,
            target,
            policy,
            method,
            path,
            options.body,
            sent,
            options.retry_safe or bool(key),
            end,
            options.hash_key,
            subject if use_nats else None,
            options.route,
            recording,
        )

    async def _run(
        self, call: _Call, begun: tuple[Instance, CircuitBreaker, dict[str, str], float] | None = None
    ) -> Answer:
        """Make `call`'s tries as coroutines until one gives its final answer (or error).

        `begun`: the first try's, when `call.begin` has been called for it already.
        """
        bulkhead = call.target.bulkhead
        balancer = call.target.balancer
        clock = self._clock
        while True:
            instance, breaker, headers, per_try = begun or call.begin()
            begun = None
            if not bulkhead.try_acquire():  # a free slot needs no coroutine
                await bulkhead.acquire()
            started = clock()
            balancer.started(instance)
            error: TransportError | None = None
            answer: Answer | None = None
            try:
                if call.subject is not None:
                    answer = await self._exchange_nats(
                        instance, call.subject, call.nats_path, headers, call.body, per_try
                    )
                else:
                    answer = await self._exchange(instance, call.method, call.path, headers, call.body, per_try)
            except TransportError as exc:
                error = exc
            except BaseException:  # cancelled: the instance's in-flight count must not leak
                balancer.finished(instance, clock() - started, ok=False)
                raise
            finally:
                bulkhead.release()
            step = call.end(instance, breaker, started, error, answer)
            if isinstance(step, Answer):
                return step
            await self._sleep(step)

    @staticmethod
    def _retryable(error: TransportError | None, answer: Answer | None, may_retry: bool) -> bool:
        if error is not None:
            # A request that never reached the instance can go elsewhere, whatever it is.
            return not error.sent or may_retry
        assert answer is not None
        return answer.status in _RETRY_STATUSES and may_retry

    async def _exchange(
        self,
        instance: Instance,
        method: str,
        path: str,
        headers: Mapping[str, str],
        body: bytes | None,
        timeout_s: float,
    ) -> Answer:
        try:
            reply = await self._http.request(instance.address, instance.port, method, path, headers, body, timeout_s)
        except (TimeoutError, HttpError) as exc:
            raise _transport_error(instance, exc, timeout_s) from exc
        return Answer(reply.status, reply.headers, reply.body, instance)

    async def _exchange_nats(
        self,
        instance: Instance,
        subject: str,
        path: str | None,
        headers: dict[str, str],
        body: bytes | None,
        timeout_s: float,
    ) -> Answer:
        assert self._nats is not None
        if path is not None:
            headers[PATH_HEADER] = path  # the try's own headers: `_Call.begin` made them
        try:
            msg = await self._nats.request(
                f"{subject}.{instance.instance_id}", body or b"", headers=headers, timeout_s=timeout_s
            )
        except nats.errors.NoRespondersError:
            raise TransportError(f"{instance.service} {instance.instance_id} does not listen on NATS") from None
        except nats.errors.TimeoutError:
            raise TransportError(
                f"{instance.service} did not answer over NATS within {timeout_s:.3f}s", sent=True
            ) from None
        except nats.errors.Error as exc:
            raise TransportError(f"NATS request to {instance.service} failed: {exc}", sent=True) from exc
        status, reply = answer_of(msg)
        return Answer(status, reply, msg.data, instance)

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
        policy = self.policy(op)
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
            return _decode(op, answer)
        except MeshError as exc:
            if fallback is None:
                raise
            return await fallback(exc)


def _with_timeout(policy: CallPolicy, timeout_s: float) -> CallPolicy:
    return replace(policy, timeout_s=timeout_s, per_try_timeout_s=min(policy.per_try_timeout_s, timeout_s))


def _transport_error(instance: Instance, exc: Exception, timeout_s: float) -> TransportError:
    """An HTTP try's failure (the pool's `TimeoutError` or `HttpError`) as the chain sees it."""
    if isinstance(exc, TimeoutError):
        return TransportError(f"{instance.service} at {instance.url} did not answer within {timeout_s:.3f}s", sent=True)
    return TransportError(f"{instance.service} at {instance.url}: {exc}", sent=getattr(exc, "sent", True))


def _span_attributes(service: str, method: str, path: str) -> dict[str, tracing.AttributeValue]:
    """A call span's attributes (the path without its query)."""
    return {"peer.service": service, "http.request.method": method, "url.path": path.partition("?")[0]}


def _outcome(result: Answer | BaseException | None) -> str:
    """A call's outcome in metrics and on its span."""
    if isinstance(result, Answer):
        return f"{result.status // 100}xx"
    if isinstance(result, Unavailable | DeadlineExceeded | BulkheadFull):
        return "rejected"  # local: nothing was sent
    return "transport_error"


def _finish(error: TransportError | None, answer: Answer | None) -> Answer:
    if error is not None:
        raise error
    assert answer is not None
    return answer


def _retry_after_s(headers: Mapping[str, str]) -> float | None:
    raw = headers.get("retry-after")
    return float(raw) if raw and raw.isdigit() else None


def _decode(op: Operation[Any, Resp], answer: Answer) -> Resp:
    if answer.status >= 400:
        raise _error(op, answer)
    if op.response is None or not answer.body:
        return None  # type: ignore[return-value]
    try:
        return msgspec.json.decode(answer.body, type=op.response)
    except msgspec.DecodeError as exc:
        raise BadGateway(f"{op.qualified} answered with an invalid body: {exc}") from None


def _error(op: Operation[Any, Any], answer: Answer) -> Exception:
    retry_after_s = _retry_after_s(answer.headers)
    if answer.headers.get("content-type", "").startswith(PROBLEM_CONTENT_TYPE):
        try:
            return error_from_problem(_problem.decode(answer.body), retry_after_s=retry_after_s)
        except msgspec.DecodeError:
            pass
    return error_from_problem(
        Problem(type="about:blank", title=f"{op.qualified} answered {answer.status}", status=answer.status),
        retry_after_s=retry_after_s,
    )
