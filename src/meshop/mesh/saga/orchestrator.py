"""Sagas: a sequence of steps, each undone by a compensation if a later one fails.

The orchestrator persists the saga's state before and after every step (`SagaLog`), so a
restarted process resumes unfinished sagas. Each step's remote calls carry the
idempotency key `<saga id>:<step>`, so running a step again has no second effect.

Steps before the pivot may fail: a business failure (`StepFailed`) or the saga's
deadline makes it compensate the steps done so far, newest first. The pivot and the
steps after it only go forward: they are retried until they succeed.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, Protocol

import structlog

from meshop.mesh.errors import DeadlineExceeded, MeshError, NotFound, ProblemError, TransportError
from meshop.mesh.telemetry import tracecontext, tracing
from meshop.mesh.telemetry.tracing import Span

log = structlog.get_logger("meshop.saga")


CANCELLED_BY_REQUEST = "CUSTOMER_CANCELLED"


class StepFailed(MeshError):
    """A step failed for a business reason (declined, out of stock): compensate."""

    def __init__(self, reason: str, detail: str | None = None) -> None:
        super().__init__(detail or reason)
        self.reason = reason


class SagaStatus(enum.Enum):
    """Where a saga is: running forward, compensating, or finished either way."""

    RUNNING = "RUNNING"
    COMPENSATING = "COMPENSATING"
    COMPLETED = "COMPLETED"
    COMPENSATED = "COMPENSATED"

    @property
    def finished(self) -> bool:
        return self in (SagaStatus.COMPLETED, SagaStatus.COMPENSATED)


@dataclass
class SagaState:
    """A saga's persisted progress."""

    saga_id: str
    name: str
    _: KW_ONLY
    status: SagaStatus = SagaStatus.RUNNING
    #: Index of the next step to run (RUNNING) or the steps left to compensate (COMPENSATING).
    step: int = 0
    data: dict[str, Any] = field(default_factory=dict)
    reason: str | None = None
    deadline_at: float = 0.0  # wall-clock
    #: When the log last recorded this saga (its lease: see `SagaLog.claim`).
    updated_at: float = 0.0
    #: Whether cancellation had been requested as of the last save (the log sets it).
    cancel_requested: bool = False

    def key(self, step: str) -> str:
        """The idempotency key of one step's remote effects."""
        return f"{self.saga_id}:{step}"


Action = Callable[[SagaState], Awaitable[None]]


@dataclass(frozen=True)
class Step:
    """One step: an action, and the compensation that undoes it (None: nothing to undo)."""

    name: str
    action: Action
    compensation: Action | None = None
    _: KW_ONLY
    #: Passing this step commits the saga: it and every later step only go forward.
    pivot: bool = False
    #: The reason recorded when this step fails with an unexpected, non-retryable error.
    failure_reason: str = "FAILED"
    #: The reason recorded when the deadline passes while the participant kept answering
    #: with retryable errors (say, a payment provider outage); "TIMEOUT" if it did not answer.
    exhausted_reason: str = "TIMEOUT"


class SagaTakenOver(Exception):
    """Another process claimed this saga since this one last wrote it: stop driving it."""


class SagaLog(Protocol):
    """Where saga states are persisted (the owning service's database).

    `updated_at` doubles as a lease and a fencing token: a process that runs a saga keeps
    touching it, and a process that wants to resume an idle one must `claim` it (a
    compare-and-set on `updated_at`). Every save and touch is a compare-and-set too, so a
    runner that was slow rather than dead (its saga claimed meanwhile) fails its next
    write with `SagaTakenOver` and stops: one saga never ends twice.
    """

    async def save(self, state: SagaState) -> None:
        """Persist `state`; also refresh `state.cancel_requested` from the log.

        Raises `SagaTakenOver` (persisting nothing) if another runner claimed the saga.
        """
        ...

    async def touch(self, state: SagaState) -> None:
        """Renew the lease; raises `SagaTakenOver` if another runner claimed the saga."""
        ...

    async def claim(self, state: SagaState) -> bool: ...

    async def checkpoint(self, state: SagaState, *, entering_pivot: bool) -> bool:
        """Before a step that can still be undone: True if cancellation was requested.

        With `entering_pivot`, atomically records that the pivot was started unless
        cancellation was requested (so a cancel either wins or is refused, never lost).
        """
        ...

    async def unfinished(self, *, idle_for_s: float) -> list[SagaState]: ...


@dataclass(frozen=True)
class Saga:
    """A saga definition: its steps and what happens when it ends."""

    name: str
    steps: Sequence[Step]
    on_completed: Action
    on_compensated: Action

    def __post_init__(self) -> None:
        if sum(1 for s in self.steps if s.pivot) > 1:
            raise ValueError("a saga has at most one pivot")

    @property
    def pivot_index(self) -> int:
        return next((i for i, s in enumerate(self.steps) if s.pivot), len(self.steps))


class SagaRunner:
    """Runs sagas to completion or full compensation, retrying transient failures."""

    def __init__(
        self,
        saga: Saga,
        log_: SagaLog,
        *,
        deadline_s: float = 30.0,
        backoff_s: float = 0.05,
        max_backoff_s: float = 2.0,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.saga = saga
        self._log = log_
        self.deadline_s = deadline_s
        self._backoff_s = backoff_s
        self._max_backoff_s = max_backoff_s
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._running: set[str] = set()
        self._resumed: set[asyncio.Task[SagaState]] = set()

    @property
    def running(self) -> frozenset[str]:
        return frozenset(self._running)

    def new(self, saga_id: str, data: dict[str, Any]) -> SagaState:
        """A saga started under the current trace context (its steps and events carry it)."""
        if (traceparent := tracecontext.current()) is not None:
            data = {**data, "_traceparent": traceparent}
        return SagaState(saga_id=saga_id, name=self.saga.name, data=data, deadline_at=self._clock() + self.deadline_s)

    async def run(self, state: SagaState) -> SagaState:
        """Drive `state` to COMPLETED or COMPENSATED, persisting every transition."""
        self._running.add(state.saga_id)
        try:
            with tracecontext.use_traceparent(state.data.get("_traceparent")):
                return await self._run(state)
        except SagaTakenOver:
            # We were slow, not dead: the runner that claimed it finishes it (steps are
            # idempotent by key, so what we did meanwhile happens once).
            log.warning("saga taken over by another runner; this one stops", saga_id=state.saga_id)
            return state
        finally:
            self._running.discard(state.saga_id)

    async def _run(self, state: SagaState) -> SagaState:
        steps = self.saga.steps
        pivot = self.saga.pivot_index
        while state.status is SagaStatus.RUNNING and state.step < len(steps):
            step = steps[state.step]
            forward_only = state.step > pivot or (state.step == pivot and state.data.get("_pivoted", False))
            # A cancel request is seen by the save after each step (or the load of a resumed
            # saga); entering the pivot asks the log atomically, so no request is lost.
            if not forward_only and (
                state.cancel_requested
                or (state.step == pivot and await self._log.checkpoint(state, entering_pivot=True))
            ):
                await self._begin_compensation(state, CANCELLED_BY_REQUEST, include_current=False)
                break
            if state.step == pivot:
                state.data["_pivoted"] = True
                forward_only = True
            try:
                with self._span(state, step.name):
                    await self._attempt(
                        state,
                        step.action,
                        until=None if forward_only else state.deadline_at,
                        exhausted_reason=step.exhausted_reason,
                    )
            except StepFailed as failed:
                await self._begin_compensation(state, failed.reason, include_current=False)
                break
            except _Unfinished as exc:
                # The outcome is unknown (the deadline passed mid-step): undo it too;
                # compensations tolerate an effect that never happened.
                await self._begin_compensation(state, exc.reason or step.failure_reason, include_current=True)
                break
            except _Rejected as exc:
                if forward_only:  # past the pivot there is no way back: keep trying
                    log.error(
                        "saga step rejected after the pivot",
                        saga_id=state.saga_id,
                        step=step.name,
                        error=repr(exc.__cause__),
                    )
                    await self._sleep(self._max_backoff_s)
                    continue
                await self._begin_compensation(state, step.failure_reason, include_current=False)
                break
            state.step += 1
            if state.step == len(steps):  # the last step: record it and the end in one save
                await self.saga.on_completed(state)
                state.status = SagaStatus.COMPLETED
            await self._log.save(state)
        if state.status is SagaStatus.RUNNING:  # nothing left to run (resumed at its very end)
            await self.saga.on_completed(state)
            state.status = SagaStatus.COMPLETED
            await self._log.save(state)
        if state.status is SagaStatus.COMPENSATING:
            while state.step > 0:
                compensation = steps[state.step - 1].compensation
                if compensation is not None:
                    try:
                        with self._span(state, "undo " + steps[state.step - 1].name):
                            await self._attempt(state, compensation, until=None, tolerate_missing=True)
                    except _Rejected as exc:
                        log.error(
                            "compensation rejected",
                            saga_id=state.saga_id,
                            step=steps[state.step - 1].name,
                            error=repr(exc.__cause__),
                        )
                state.step -= 1
                await self._log.save(state)
            await self.saga.on_compensated(state)
            state.status = SagaStatus.COMPENSATED
            await self._log.save(state)
        return state

    def _span(self, state: SagaState, step: str) -> contextlib.AbstractContextManager[Span | None]:
        """A span per step: a business failure (StepFailed) is an answer, not an error of the system."""
        return tracing.span(
            f"saga {state.name} {step}",
            attributes={"saga.name": state.name, "saga.id": state.saga_id, "saga.step": step},
            answers=(StepFailed,),
        )

    async def _begin_compensation(self, state: SagaState, reason: str, *, include_current: bool) -> None:
        state.status = SagaStatus.COMPENSATING
        state.reason = reason
        state.step += 1 if include_current else 0
        await self._log.save(state)
        log.info("saga compensating", saga=state.name, saga_id=state.saga_id, reason=reason)

    async def _attempt(
        self,
        state: SagaState,
        action: Action,
        *,
        until: float | None,
        tolerate_missing: bool = False,
        exhausted_reason: str = "TIMEOUT",
    ) -> None:
        """Run `action` until it succeeds, retrying transient errors with jittered backoff."""
        delay = self._backoff_s
        while True:
            try:
                await action(state)
                return
            except StepFailed:
                raise
            except NotFound:
                if tolerate_missing:
                    return
                raise _Rejected() from None
            except (TransportError, DeadlineExceeded) as exc:
                error: Exception = exc
                answered = False
            except ProblemError as exc:
                if not exc.retryable and exc.status < 500:
                    raise _Rejected() from exc
                error = exc
                answered = True
            if until is not None and self._clock() + delay >= until:
                raise _Unfinished(exhausted_reason if answered else "TIMEOUT") from error
            log.warning("saga step retry", saga_id=state.saga_id, error=str(error), delay_s=round(delay, 3))
            await self._log.touch(state)  # still ours: keep the lease while retrying
            await self._sleep(self._rng.uniform(0, delay))
            delay = min(self._max_backoff_s, delay * 2)

    async def resume_unfinished(self, *, idle_for_s: float) -> list[asyncio.Task[SagaState]]:
        """Resume every saga nobody has advanced for `idle_for_s` (after a crash).

        Each is claimed first, so of several replicas sweeping at once only one runs it.
        Returns the tasks now driving the resumed sagas.
        """
        started = []
        for state in await self._log.unfinished(idle_for_s=idle_for_s):
            if state.saga_id in self._running or not await self._log.claim(state):
                continue
            log.info("saga resumed", saga_id=state.saga_id, status=state.status.value, step=state.step)
            task = asyncio.create_task(self.run(state), name=f"saga-{state.saga_id}")
            self._resumed.add(task)
            task.add_done_callback(self._resumed.discard)
            started.append(task)
        return started

    async def sweep_forever(self, *, idle_for_s: float, interval_s: float) -> None:
        """Resume idle unfinished sagas now and every `interval_s` (crash recovery)."""
        while True:
            try:
                await self.resume_unfinished(idle_for_s=idle_for_s)
            except Exception as exc:  # the database may be briefly unavailable: try later
                log.warning("saga sweep failed", error=repr(exc))
            await self._sleep(interval_s)


class _Unfinished(Exception):
    def __init__(self, reason: str | None) -> None:
        super().__init__(reason)
        self.reason = reason


class _Rejected(Exception):
    """A step failed with a non-retryable error that is not a declared business failure."""
