"""The test kit users get with the mesh: a clock moved by hand, waiting on a condition."""

from __future__ import annotations

import pytest

from meshop.mesh.resilience import BreakerState, CircuitBreaker
from meshop.mesh.resilience.policy import BreakerPolicy
from meshop.mesh.testing import FakeClock, eventually


async def test_a_fake_clock_moves_only_when_told_and_never_back() -> None:
    clock = FakeClock(50.0)
    assert clock() == 50.0
    clock.advance(1.5)
    await clock.sleep(0.5)
    assert clock() == 52.0
    with pytest.raises(ValueError, match="does not go back"):
        clock.advance(-1)


def test_a_fake_clock_drives_the_mesh_where_time_is_behaviour() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(BreakerPolicy(minimum_calls=2, window_size=2, open_s=5.0), clock=clock)
    for _ in range(2):
        breaker.record(failed=True, duration_s=0.01)
    assert breaker.state is BreakerState.OPEN
    clock.advance(5.0)
    assert breaker.allow()
    assert breaker.state is BreakerState.HALF_OPEN


async def test_eventually_gives_the_first_truthy_answer_of_a_plain_or_async_check() -> None:
    answers = iter([None, [], ["a"]])
    assert await eventually(lambda: next(answers), poll_s=0) == ["a"]

    calls = 0

    async def ready() -> int:
        nonlocal calls
        calls += 1
        return calls if calls == 3 else 0

    assert await eventually(ready, poll_s=0) == 3


async def test_eventually_names_what_was_not_true_in_time() -> None:
    with pytest.raises(AssertionError, match=r"the stock was not true within 0\.05 s"):
        await eventually(lambda: False, within_s=0.05, what="the stock")
