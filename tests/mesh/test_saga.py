"""The saga orchestrator with an in-memory log, a fake clock and no real sleeping."""

from __future__ import annotations

import asyncio
import copy
import random

import pytest

from meshop.mesh.errors import NotFound, ServiceUnavailable, TransportError, Unprocessable
from meshop.mesh.saga.orchestrator import Saga, SagaRunner, SagaState, SagaStatus, SagaTakenOver, Step, StepFailed
from meshop.mesh.testing import FakeClock


class MemoryLog:
    def __init__(self) -> None:
        self.saved: list[SagaState] = []
        self.touches = 0
        self.claimed: set[str] = set()
        self.cancel_requests: set[str] = set()
        self.pivoted: set[str] = set()

    async def save(self, state: SagaState) -> None:
        state.cancel_requested = state.saga_id in self.cancel_requests
        self.saved.append(copy.deepcopy(state))

    async def touch(self, state: SagaState) -> None:
        self.touches += 1

    async def claim(self, state: SagaState) -> bool:
        if state.saga_id in self.claimed:
            return False
        self.claimed.add(state.saga_id)
        return True

    async def checkpoint(self, state: SagaState, *, entering_pivot: bool) -> bool:
        if state.saga_id in self.cancel_requests:
            return True
        if entering_pivot:
            self.pivoted.add(state.saga_id)
        return False

    async def unfinished(self, *, idle_for_s: float) -> list[SagaState]:
        latest: dict[str, SagaState] = {}
        for state in self.saved:
            latest[state.saga_id] = state
        return [copy.deepcopy(s) for s in latest.values() if not s.status.finished]


class Script:
    """Records calls; each step fails as told."""

    def __init__(self, failures: dict[str, list[Exception]] | None = None) -> None:
        self.calls: list[str] = []
        self.failures = failures or {}

    def action(self, name: str):  # type: ignore[no-untyped-def]
        async def run(state: SagaState) -> None:
            self.calls.append(name)
            pending = self.failures.get(name)
            if pending:
                raise pending.pop(0)
            state.data[name] = True

        return run


def saga(script: Script) -> Saga:
    return Saga(
        name="test",
        steps=[
            Step("a", script.action("a"), script.action("undo-a")),
            Step("b", script.action("b"), script.action("undo-b")),
            Step("c", script.action("c"), script.action("undo-c")),
            Step("pivot", script.action("pivot"), pivot=True),
            Step("after", script.action("after")),
        ],
        on_completed=script.action("completed"),
        on_compensated=script.action("compensated"),
    )


def runner(script: Script, log: MemoryLog, clock: FakeClock, deadline_s: float = 30.0) -> SagaRunner:
    return SagaRunner(saga(script), log, deadline_s=deadline_s, clock=clock, sleep=clock.sleep, rng=random.Random(1))


async def test_every_step_runs_in_order_and_the_saga_completes() -> None:
    script, log, clock = Script(), MemoryLog(), FakeClock()
    r = runner(script, log, clock)
    state = await r.run(r.new("s1", {}))
    assert script.calls == ["a", "b", "c", "pivot", "after", "completed"]
    assert state.status is SagaStatus.COMPLETED
    assert log.saved[-1].status is SagaStatus.COMPLETED


async def test_a_business_failure_compensates_done_steps_newest_first() -> None:
    script, log, clock = Script({"c": [StepFailed("NOPE")]}), MemoryLog(), FakeClock()
    r = runner(script, log, clock)
    state = await r.run(r.new("s1", {}))
    assert script.calls == ["a", "b", "c", "undo-b", "undo-a", "compensated"]
    assert state.status is SagaStatus.COMPENSATED
    assert state.reason == "NOPE"


async def test_transient_errors_are_retried_with_the_same_step() -> None:
    errors: list[Exception] = [TransportError("refused"), ServiceUnavailable("busy")]
    script, log, clock = Script({"b": errors}), MemoryLog(), FakeClock()
    r = runner(script, log, clock)
    state = await r.run(r.new("s1", {}))
    assert script.calls == ["a", "b", "b", "b", "c", "pivot", "after", "completed"]
    assert state.status is SagaStatus.COMPLETED


async def test_a_step_still_failing_at_the_deadline_is_compensated_as_timeout() -> None:
    script, log, clock = Script({"b": [TransportError("down")] * 1000}), MemoryLog(), FakeClock()
    r = runner(script, log, clock, deadline_s=5.0)
    state = await r.run(r.new("s1", {}))
    assert state.status is SagaStatus.COMPENSATED
    assert state.reason == "TIMEOUT"
    # The outcome of b is unknown, so it is compensated too; then a.
    assert script.calls[-3:] == ["undo-b", "undo-a", "compensated"]
    assert clock.now - 1000.0 <= 5.0 + 2.0


async def test_steps_after_the_pivot_are_retried_past_the_deadline() -> None:
    script, log, clock = Script({"after": [TransportError("down")] * 50}), MemoryLog(), FakeClock()
    r = runner(script, log, clock, deadline_s=1.0)
    state = await r.run(r.new("s1", {}))
    assert state.status is SagaStatus.COMPLETED
    assert script.calls.count("after") == 51


async def test_an_unexpected_rejection_before_the_pivot_compensates_with_the_step_reason() -> None:
    script, log, clock = Script({"b": [Unprocessable("bad")]}), MemoryLog(), FakeClock()
    r = runner(script, log, clock)
    state = await r.run(r.new("s1", {}))
    assert state.status is SagaStatus.COMPENSATED
    assert state.reason == "FAILED"


async def test_a_compensation_for_an_effect_that_never_happened_counts_as_done() -> None:
    script, log, clock = Script({"c": [StepFailed("NOPE")], "undo-b": [NotFound("gone")]}), MemoryLog(), FakeClock()
    r = runner(script, log, clock)
    state = await r.run(r.new("s1", {}))
    assert state.status is SagaStatus.COMPENSATED
    assert "undo-a" in script.calls


@pytest.mark.parametrize("crash_after", range(1, 9))
async def test_a_saga_resumed_from_any_persisted_state_finishes_the_same_way(crash_after: int) -> None:
    """Replaying from the log after a crash at any save point reaches the same end."""
    script, log, clock = Script(), MemoryLog(), FakeClock()
    r = runner(script, log, clock)
    await r.run(r.new("s1", {}))
    truncated = MemoryLog()
    truncated.saved = log.saved[:crash_after]
    was_finished = truncated.saved[-1].status.finished
    resumed_script = Script()
    resumed = runner(resumed_script, truncated, clock)
    tasks = await resumed.resume_unfinished(idle_for_s=0)
    assert len(tasks) == (0 if was_finished else 1)
    await asyncio.gather(*tasks)
    assert truncated.saved[-1].status is SagaStatus.COMPLETED
    if not was_finished:  # it re-ran only what had not been recorded as done
        assert resumed_script.calls[-1] == "completed"
        assert len(resumed_script.calls) <= 6


def test_a_saga_has_at_most_one_pivot() -> None:
    script = Script()
    with pytest.raises(ValueError, match="pivot"):
        Saga(
            "x",
            [Step("a", script.action("a"), pivot=True), Step("b", script.action("b"), pivot=True)],
            script.action("c"),
            script.action("d"),
        )


async def test_a_saga_is_resumed_by_one_sweeper_only() -> None:
    """Two runners (two replicas) sweeping the same log: the claim lets one run it."""
    script, log, clock = Script(), MemoryLog(), FakeClock()
    first = runner(script, log, clock)
    state = first.new("s1", {})
    await log.save(state)
    second = runner(Script(), log, clock)
    tasks = [*await first.resume_unfinished(idle_for_s=0), *await second.resume_unfinished(idle_for_s=0)]
    assert len(tasks) == 1
    await asyncio.gather(*tasks)


async def test_retries_keep_the_lease_alive() -> None:
    script, log, clock = Script({"b": [TransportError("down")] * 3}), MemoryLog(), FakeClock()
    r = runner(script, log, clock)
    await r.run(r.new("s1", {}))
    assert log.touches == 3


async def test_a_cancel_requested_before_the_pivot_compensates_what_was_done() -> None:
    script, log, clock = Script(), MemoryLog(), FakeClock()
    r = runner(script, log, clock)
    original_b = script.action("b")

    async def b_then_cancel(state: SagaState) -> None:
        await original_b(state)
        log.cancel_requests.add(state.saga_id)  # the customer cancels while b runs

    saga_ = r.saga
    steps = list(saga_.steps)
    steps[1] = Step("b", b_then_cancel, script.action("undo-b"))
    r.saga = Saga(saga_.name, steps, saga_.on_completed, saga_.on_compensated)
    state = await r.run(r.new("s1", {}))
    assert (state.status, state.reason) == (SagaStatus.COMPENSATED, "CUSTOMER_CANCELLED")
    assert script.calls == ["a", "b", "undo-b", "undo-a", "compensated"]


async def test_a_cancel_after_the_pivot_started_is_not_honoured() -> None:
    script, log, clock = Script(), MemoryLog(), FakeClock()
    r = runner(script, log, clock)
    original = script.action("pivot")

    async def pivot_then_cancel(state: SagaState) -> None:
        log.cancel_requests.add(state.saga_id)  # too late: the pivot was entered
        await original(state)

    steps = list(r.saga.steps)
    steps[3] = Step("pivot", pivot_then_cancel, pivot=True)
    r.saga = Saga(r.saga.name, steps, r.saga.on_completed, r.saga.on_compensated)
    state = await r.run(r.new("s1", {}))
    assert state.status is SagaStatus.COMPLETED
    assert "s1" in log.pivoted


async def test_a_participant_that_keeps_answering_503_until_the_deadline_gives_the_exhausted_reason() -> None:
    script, log, clock = Script({"b": [ServiceUnavailable("provider down")] * 1000}), MemoryLog(), FakeClock()
    r = runner(script, log, clock, deadline_s=5.0)
    steps = list(r.saga.steps)
    steps[1] = Step("b", script.action("b"), script.action("undo-b"), exhausted_reason="PAYMENT_FAILED")
    r.saga = Saga(r.saga.name, steps, r.saga.on_completed, r.saga.on_compensated)
    state = await r.run(r.new("s1", {}))
    assert (state.status, state.reason) == (SagaStatus.COMPENSATED, "PAYMENT_FAILED")


async def test_a_runner_whose_saga_was_taken_over_stops_without_finishing_it() -> None:
    class TakenOverAfterFirstSave(MemoryLog):
        async def save(self, state: SagaState) -> None:
            if self.saved:
                raise SagaTakenOver(state.saga_id)
            await super().save(state)

    script, log, clock = Script(), TakenOverAfterFirstSave(), FakeClock()
    r = runner(script, log, clock)
    state = await r.run(r.new("s1", {}))
    assert script.calls == ["a", "b"]  # stopped at its first failed write
    assert state.status is SagaStatus.RUNNING
    assert "s1" not in r.running
