"""One logical request through the resilience chain, and its tries as coroutines.

    deadline: overall budget; downstream gets the remainder in a header
    └─ retry: only retryable failures of retry-safe calls, full-jitter backoff, a retry
       budget, never with too little deadline left; a new instance each time
       └─ instance choice (`picking`): the balancer over healthy instances (`health`)
          └─ bulkhead: bounded in-flight calls per service (overflow: 503, local)
             └─ per-try timeout → one `Exchange` (HTTP or NATS) to the chosen instance

`Call.begin` and `Call.end`, the steps around each try, are synchronous, so the same chain
drives a try awaited in a coroutine (`Chain.run`) and one sent with callbacks (`callbacks`).
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Final, Literal

import structlog

from meshop.mesh.client.picking import Picker, Unavailable
from meshop.mesh.client.targets import Targets
from meshop.mesh.errors import DeadlineExceeded, TransportError
from meshop.mesh.headers import DEADLINE_HEADER, IDEMPOTENCY_HEADER
from meshop.mesh.registry.base import Instance, Registry
from meshop.mesh.resilience import BulkheadFull, CallPolicy, CircuitBreaker, backoff_s
from meshop.mesh.telemetry import tracecontext, tracing
from meshop.mesh.telemetry.metrics import Metrics
from meshop.mesh.transport.exchange import Exchange, Request

Clock = Callable[[], float]
log = structlog.get_logger("meshop.client")

RETRY_STATUSES: Final = frozenset({429, 503})
# Module-level Finals are C statics when compiled; `time.x()` looks `x` up on the module per call (~270 instructions).
_time_ns: Final = time.time_ns

#: A try begun: its instance and breaker, the headers it sends, its timeout.
Begun = tuple[Instance, CircuitBreaker, dict[str, str], float]


class Answer:
    """An instance's final answer to a call, whatever its status.

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


class Chain:
    """What every call of one caller shares: its targets, instance choice, exchanges, clock."""

    def __init__(
        self,
        registry: Registry,
        targets: Targets,
        picker: Picker,
        *,
        default: Exchange,
        nats: Exchange | None,
        clock: Clock,
        rng: random.Random,
        sleep: Callable[[float], Awaitable[None]],
    ) -> None:
        self.registry: Final = registry
        self.targets: Final = targets
        self.picker: Final = picker
        #: What carries every try, unless the call goes over NATS (`nats`).
        self.default: Final = default
        self.nats: Final = nats
        self.clock: Final = clock
        self.rng: Final = rng
        self.sleep: Final = sleep
        #: Calls by target and outcome, when the process keeps metrics.
        self.metrics: Metrics | None = None

    async def run(self, call: Call, begun: Begun | None = None) -> Answer:
        """Make `call`'s tries as coroutines until one gives its final answer (or error).

        `begun`: the first try's, when `call.begin` has been called for it already.
        """
        bulkhead = call.target.bulkhead
        balancer = call.target.balancer
        clock = self.clock
        exchange = call.exchange
        request = call.request
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
                reply = await exchange.exchange(instance, request, headers, per_try)
                answer = Answer(reply.status, reply.headers, reply.body, instance)
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
            await self.sleep(step)

    def record(self, service: str, span: tracing.SpanRecord | None, seconds: float, outcome: str) -> None:
        """A call's outcome on its span and in the metrics."""
        if span is not None:
            span.attributes["meshop.outcome"] = outcome
            if outcome in ("5xx", "transport_error"):
                tracing.fail(span, outcome)
        if self.metrics is not None:
            self.metrics.observe_call(service, outcome, seconds)


class Call:
    """One logical request: what its tries share, and the two steps around each try.

    Counted against the target's retry budget when made. `traceparent` goes to the callee;
    with a NATS `subject` (the operation's) and a policy whose transport is `nats`, each try
    is a NATS request instead of an HTTP exchange.
    """

    def __init__(
        self,
        chain: Chain,
        service: str,
        method: str,
        path: str,
        options: CallOptions,
        *,
        traceparent: str | None,
        recording: tracing.SpanRecord | None,
    ) -> None:
        target = chain.targets.get(service)
        policy = options.policy or target.policy
        end = chain.clock() + policy.timeout_s
        deadline, key, subject = options.deadline, options.idempotency_key, options.subject
        if deadline is not None and deadline < end:
            end = deadline
        target.budget.request()
        # The headers every try sends; the deadline header is set per try (what is left).
        sent = {**options.headers} if options.headers else {}
        if traceparent is not None:  # the client span's: the callee's parent
            sent[tracecontext.HEADER] = traceparent
        if key:
            sent[IDEMPOTENCY_HEADER] = key
        over_nats = (options.transport or policy.transport) == "nats" and subject is not None and chain.nats is not None
        self.chain: Final = chain
        self.service: Final = service
        self.target: Final = target
        self.policy: Final = policy
        self.request: Final = Request(
            method, path, options.body, subject=subject if over_nats else None, route=options.route
        )
        self.exchange: Final[Exchange] = chain.nats if over_nats and chain.nats is not None else chain.default
        self.headers = sent
        self.may_retry: Final = options.retry_safe or bool(key)
        self.deadline: Final = end
        self.hash_key: Final = options.hash_key
        #: The client span, if it records: events are added to it only then.
        self.recording: Final = recording
        self.tried: set[str] = set()
        self.attempt = 0

    def begin(self) -> Begun:
        """The next try: its instance and breaker, the headers to send, and its timeout.

        Raises `DeadlineExceeded` when no time is left, `Unavailable` or `NoInstancesError`
        when no instance can be tried.
        """
        chain, target, service = self.chain, self.target, self.service
        while True:
            remaining = self.deadline - chain.clock()
            if remaining <= 0:
                raise DeadlineExceeded(f"deadline spent before calling {service}")
            instance = chain.picker.pick(service, target, chain.registry.instances(service), self.hash_key, self.tried)
            instance_id = instance.instance_id
            breaker = target.breakers.get(instance_id) or chain.targets.breaker(target, instance_id)
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
        return [i.instance_id for i in self.chain.registry.instances(self.service)]

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
        chain's clock and the epoch; None and 0: now): the final answer, or the delay before
        the next try.

        Raises the try's `TransportError` when it is final.
        """
        chain, target, policy = self.chain, self.target, self.policy
        duration = (chain.clock() if ended is None else ended) - started
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
                        "transport": "nats" if self.request.subject is not None else "http",
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
        if not failed and answer is not None and answer.status not in RETRY_STATUSES:
            return answer  # the common case: an answer that is not worth a retry
        if not _retryable(error, answer, self.may_retry):
            return _finish(error, answer)
        self.attempt += 1
        if self.attempt >= policy.retry.attempts or not target.budget.try_retry():
            return _finish(error, answer)
        delay = backoff_s(policy.retry, self.attempt - 1, chain.rng)
        if answer is not None and (retry_after := retry_after_s(answer.headers)) is not None:
            delay = max(delay, retry_after)
        if self.deadline - chain.clock() - delay < policy.retry.min_remaining_s:
            return _finish(error, answer)
        if recording is not None:
            recording.add_event("retry", {"attempt": self.attempt, "delay_ms": round(delay * 1000, 3)})
        self.tried.add(instance_id)
        return delay


def outcome(result: Answer | BaseException | None) -> str:
    """A call's outcome in metrics and on its span."""
    if isinstance(result, Answer):
        return f"{result.status // 100}xx"
    if isinstance(result, Unavailable | DeadlineExceeded | BulkheadFull):
        return "rejected"  # local: nothing was sent
    return "transport_error"


def retry_after_s(headers: Mapping[str, str]) -> float | None:
    raw = headers.get("retry-after")
    return float(raw) if raw and raw.isdigit() else None


def _retryable(error: TransportError | None, answer: Answer | None, may_retry: bool) -> bool:
    if error is not None:
        # A request that never reached the instance can go elsewhere, whatever it is.
        return not error.sent or may_retry
    assert answer is not None
    return answer.status in RETRY_STATUSES and may_retry


def _finish(error: TransportError | None, answer: Answer | None) -> Answer:
    if error is not None:
        raise error
    assert answer is not None
    return answer
