"""Calls driven by callbacks, for a caller that has no task to await in (the gateway's lane).

A try goes out at once on an idle pooled connection and its answer comes back through a
callback; whatever must wait (a connection to make, a full bulkhead, a retry's back-off, a
NATS request) continues as a task, through the same chain (`chain.Call`, `Chain.run`).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from typing import Final

import structlog

from meshop.mesh.client.chain import RETRY_STATUSES, Answer, Begun, Call, CallOptions, Chain, outcome
from meshop.mesh.errors import TransportError
from meshop.mesh.telemetry import tracing
from meshop.mesh.telemetry.tracing import SpanKind
from meshop.mesh.transport.exchange import Reply

log = structlog.get_logger("meshop.client")

Done = Callable[[Answer | Exception], None]
# A C static when compiled (see chain.py).
_time_ns: Final = time.time_ns


class CallbackCall(Call):
    """A `Call` whose outcome goes to a callback, `done`, exactly once."""

    def __init__(
        self,
        driver: Callbacks,
        service: str,
        method: str,
        path: str,
        options: CallOptions,
        done: Done,
        *,
        traceparent: str | None,
        recording: tracing.SpanRecord | None,
        span: tracing.SpanRecord | None,
    ) -> None:
        super().__init__(driver.chain, service, method, path, options, traceparent=traceparent, recording=recording)
        self.driver: Final = driver
        self.done: Done | None = done
        #: The call's own span (ended with it), when it opened one.
        self.span: Final = span
        self.started = driver.chain.clock()
        #: The try in flight, sent by the exchange's callback path, and when it began.
        self.begun: Begun | None = None
        self.try_started = 0.0

    def deliver(self, result: Answer | Exception) -> tuple[float, int]:
        """Hand the call's outcome to its caller, once; when (the chain's clock, epoch ns if recorded)."""
        ended = self.chain.clock()
        ended_ns = _time_ns() if self.span is not None else 0
        done, self.done = self.done, None
        assert done is not None
        done(result)
        return ended, ended_ns

    def answered(self, result: Reply | Exception) -> None:
        """The exchange's callback for the try `Callbacks.start` sent: end it, then settle or retry."""
        driver = self.driver
        self.target.bulkhead.release()
        assert self.begun is not None
        instance, breaker, _, timeout_s = self.begun
        self.begun = None
        if (
            isinstance(result, Reply)
            and result.status < 500
            and result.status not in RETRY_STATUSES
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
                driver.close(self, answer, ended, ended_ns)
            except Exception:  # a bug: the caller has its answer; it must not break the connection
                log.exception("recording a call failed", service=self.service)
            return
        try:
            if isinstance(result, Reply):
                answer = Answer(result.status, result.headers, result.body, instance)
                step = self.end(instance, breaker, self.try_started, None, answer)
            else:
                failure = self.exchange.failure(instance, result, timeout_s)
                step = self.end(instance, breaker, self.try_started, failure, None)
        except Exception as exc:  # the try's error, final
            driver.settle(self, exc)
            return
        if isinstance(step, Answer):
            driver.settle(self, step)
        else:  # a retry, after a delay: as a task
            driver.continue_as_task(self, None, step)


class Callbacks:
    """Starts calls whose outcome goes to a callback, and carries them to their end."""

    def __init__(self, chain: Chain) -> None:
        self.chain: Final = chain
        self._tasks: set[asyncio.Task[None]] = set()

    def start(
        self,
        service: str,
        method: str,
        path: str,
        done: Done,
        options: CallOptions,
        *,
        traceparent: str | None,
        operation: str | None,
        caller_span: tracing.SpanRecord | None,
        attributes: dict[str, tracing.AttributeValue],
    ) -> None:
        """See `ServiceClient.start`."""
        span: tracing.SpanRecord | None = None
        if caller_span is None:
            span, traceparent = tracing.open_span(
                operation or f"{service} {method}",
                SpanKind.CLIENT,
                parent=traceparent,
                attributes=attributes,
                root=False,
            )
        call = CallbackCall(
            self,
            service,
            method,
            path,
            options,
            done,
            traceparent=traceparent,
            recording=span or caller_span,
            span=span,
        )
        try:
            begun = call.begin()
        except Exception as exc:  # deadline spent, no instance to try
            self.settle(call, exc)
            return
        instance, _, try_headers, timeout_s = begun
        target = call.target
        if target.bulkhead.try_acquire():
            call.begun, call.try_started = begun, self.chain.clock()
            try:
                sent = call.exchange.send(instance, call.request, try_headers, timeout_s, call.answered)
            except Exception as exc:  # a header that cannot be sent (a line break in it)
                target.bulkhead.release()
                self.settle(call, exc)
                return
            if sent:
                target.balancer.started(instance)
                return
            target.bulkhead.release()  # nothing sent (no idle connection; NATS): a task carries it
        self.continue_as_task(call, begun, None)

    async def _continue(self, call: CallbackCall, begun: Begun | None, delay: float | None) -> None:
        """The rest of a started call as a coroutine: from a try begun, or after a retry's delay."""
        try:
            if delay is not None:
                await self.chain.sleep(delay)
            answer = await self.chain.run(call, begun)
        except asyncio.CancelledError:
            self.settle(call, TransportError(f"the call to {call.service} was cancelled", sent=True))
            raise
        except Exception as exc:
            self.settle(call, exc)
        else:
            self.settle(call, answer)

    def settle(self, call: CallbackCall, result: Answer | Exception) -> None:
        """A started call is over: its caller's callback first, then its metrics and span."""
        ended, ended_ns = call.deliver(result)
        try:
            self.close(call, result, ended, ended_ns)
        except Exception:  # a bug: the caller has its answer; it must not break the connection or task
            log.exception("recording a call failed", service=call.service)

    def close(self, call: CallbackCall, result: Answer | Exception, ended: float, ended_ns: int) -> None:
        """Record a settled call: its metrics and span, timed when it settled (`ended`, `ended_ns`)."""
        span = call.span
        self.chain.record(call.service, span, ended - call.started, outcome(result))
        if span is not None:
            if isinstance(result, Exception) and not span.error:  # a local rejection too, as `span()` marks it
                tracing.fail(span, repr(result)[:200])
            tracing.end_span(span, ended_ns)

    def continue_as_task(self, call: CallbackCall, begun: Begun | None, delay: float | None) -> None:
        """Go on with a started call in a task (`_continue`)."""
        task = asyncio.get_running_loop().create_task(self._continue(call, begun, delay))
        self._tasks.add(task)  # referenced until done: the loop keeps only weak references
        task.add_done_callback(functools.partial(self._task_done, call))

    def _task_done(self, call: CallbackCall, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if call.done is not None:  # cancelled before its first step: `_continue`'s handlers never ran
            self.settle(call, TransportError(f"the call to {call.service} was cancelled", sent=True))
