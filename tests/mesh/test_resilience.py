"""Breaker, retry budget, outlier ejection and policies: fake clocks and properties."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from meshop.mesh.api.operation import Operation
from meshop.mesh.errors import ConfigError
from meshop.mesh.resilience import (
    BreakerPolicy,
    BreakerState,
    CircuitBreaker,
    OutlierDetector,
    OutlierPolicy,
    RetryBudget,
    RetryPolicy,
    backoff_s,
)
from meshop.mesh.resilience.config import Policies
from meshop.mesh.resilience.window import SlidingCounts
from meshop.mesh.testing import FakeClock

POLICY = BreakerPolicy(
    window="count", window_size=10, minimum_calls=5, failure_rate=0.5, open_s=5.0, half_open_probes=2
)


def test_a_breaker_opens_at_the_failure_rate_after_minimum_calls() -> None:
    breaker = CircuitBreaker(POLICY, clock=FakeClock())
    for _ in range(4):
        breaker.record(failed=True, duration_s=0.01)
    assert breaker.state is BreakerState.CLOSED  # below minimum calls
    breaker.record(failed=True, duration_s=0.01)
    assert breaker.state is BreakerState.OPEN
    assert not breaker.allow()


def test_an_open_breaker_half_opens_after_its_wait_and_closes_on_good_probes() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(POLICY, clock=clock)
    for _ in range(5):
        breaker.record(failed=True, duration_s=0.01)
    clock.now += 5.0
    assert breaker.allow()
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.allow()
    assert not breaker.allow()  # only two probes
    breaker.record(failed=False, duration_s=0.01)
    breaker.record(failed=False, duration_s=0.01)
    assert breaker.state is BreakerState.CLOSED


def test_a_failed_probe_reopens_the_breaker() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(POLICY, clock=clock)
    for _ in range(5):
        breaker.record(failed=True, duration_s=0.01)
    clock.now += 5.0
    assert breaker.allow()
    breaker.record(failed=True, duration_s=0.01)
    assert breaker.state is BreakerState.OPEN
    clock.now += 4.9
    assert not breaker.allow()


def test_slow_calls_open_a_breaker_with_a_slow_call_threshold() -> None:
    policy = BreakerPolicy(minimum_calls=4, window_size=4, slow_call_rate=0.5, slow_call_s=0.1)
    breaker = CircuitBreaker(policy, clock=FakeClock())
    for duration in (0.2, 0.01, 0.3, 0.01):
        breaker.record(failed=False, duration_s=duration)
    assert breaker.state is BreakerState.OPEN


def test_a_time_window_forgets_old_failures() -> None:
    clock = FakeClock()
    policy = BreakerPolicy(window="time", window_size=10, minimum_calls=4, failure_rate=0.5)
    breaker = CircuitBreaker(policy, clock=clock)
    for _ in range(3):
        breaker.record(failed=True, duration_s=0.01)
    clock.now += 11
    for _ in range(3):
        breaker.record(failed=False, duration_s=0.01)
    breaker.record(failed=True, duration_s=0.01)
    assert breaker.state is BreakerState.CLOSED


def test_a_count_window_holds_the_last_calls_only() -> None:
    policy = BreakerPolicy(window="count", window_size=4, minimum_calls=4, failure_rate=0.75)
    breaker = CircuitBreaker(policy, clock=FakeClock())
    for failed in (True, False, False, False, True, True):  # the first failure has left the ring
        breaker.record(failed=failed, duration_s=0.01)
    assert (breaker.state, breaker.calls_in_window) == (BreakerState.CLOSED, 4)
    breaker.record(failed=True, duration_s=0.01)  # 3 of the last 4
    assert breaker.state is BreakerState.OPEN


@settings(max_examples=200, deadline=None)
@given(
    events=st.lists(st.tuples(st.floats(min_value=0, max_value=5), st.integers(min_value=0, max_value=1)), max_size=60),
    slices=st.integers(min_value=1, max_value=12),
)
def test_sliding_counts_are_the_events_in_the_window_slices(events: list[tuple[float, int]], slices: int) -> None:
    window_s = 3.0
    counts = SlidingCounts(window_s, slices, 2)
    now, seen = 1000.0, []
    for wait, kind in events:
        now += wait
        counts.add(now, kind)
        seen.append((now, kind))
        newest = int(now // (window_s / slices))
        for k in (0, 1):  # a log's answer: events whose slice is one of the last `slices`
            expected = sum(1 for at, of in seen if of == k and int(at // (window_s / slices)) > newest - slices)
            assert counts.total(now, k) == expected


class BreakerMachine(RuleBasedStateMachine):
    """Any sequence of calls, failures and waits keeps the breaker's invariants."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.breaker = CircuitBreaker(POLICY, clock=self.clock)
        self.admitted_while_half_open = 0

    @rule(failed=st.booleans())
    def call(self, failed: bool) -> None:
        state = self.breaker.state
        if self.breaker.allow():
            if self.breaker.state is BreakerState.HALF_OPEN:
                self.admitted_while_half_open += 1
            self.breaker.record(failed=failed, duration_s=0.01)
        else:
            assert state in (BreakerState.OPEN, BreakerState.HALF_OPEN)

    @rule(seconds=st.floats(min_value=0, max_value=10))
    def wait(self, seconds: float) -> None:
        self.clock.now += seconds

    @precondition(lambda self: self.breaker.state is BreakerState.OPEN)
    @rule()
    def open_rejects_until_its_wait_is_over(self) -> None:
        if self.clock.now - self.breaker._opened_at < POLICY.open_s:
            assert not self.breaker.allow()

    @invariant()
    def half_open_admits_at_most_the_probes(self) -> None:
        if self.breaker.state is BreakerState.HALF_OPEN:
            assert self.breaker._probes_admitted <= POLICY.half_open_probes

    @invariant()
    def the_window_never_exceeds_its_size(self) -> None:
        assert self.breaker.calls_in_window <= POLICY.window_size


TestBreakerMachine = BreakerMachine.TestCase
TestBreakerMachine.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)


@settings(max_examples=100, deadline=None)
@given(
    requests=st.integers(min_value=0, max_value=500),
    ratio=st.floats(min_value=0, max_value=1),
    floor=st.floats(min_value=0, max_value=5),
)
def test_the_retry_budget_never_allows_more_than_ratio_plus_floor(requests: int, ratio: float, floor: float) -> None:
    clock = FakeClock()
    policy = RetryPolicy(budget_ratio=ratio, budget_min_per_s=floor, budget_window_s=10)
    budget = RetryBudget(policy, clock=clock)
    for _ in range(requests):
        budget.request()
    granted = sum(1 for _ in range(2000) if budget.try_retry())
    assert granted <= ratio * requests + floor * 10 + 1e-9
    assert granted >= int(ratio * requests + floor * 10) - 1


def test_the_retry_budget_refills_as_the_window_moves() -> None:
    clock = FakeClock()
    budget = RetryBudget(RetryPolicy(budget_ratio=0.2, budget_min_per_s=0, budget_window_s=10), clock=clock)
    for _ in range(10):
        budget.request()
    assert [budget.try_retry() for _ in range(3)] == [True, True, False]
    clock.now += 11
    for _ in range(5):
        budget.request()
    assert budget.try_retry()


@given(retry=st.integers(min_value=0, max_value=20), seed=st.integers())
def test_backoff_is_full_jitter_within_the_cap(retry: int, seed: int) -> None:
    policy = RetryPolicy(backoff_base_s=0.01, backoff_max_s=0.5)
    delay = backoff_s(policy, retry, random.Random(seed))
    assert 0 <= delay <= min(0.5, 0.01 * 2**retry)


def test_consecutive_failures_eject_for_longer_each_time() -> None:
    clock = FakeClock()
    detector = OutlierDetector(
        OutlierPolicy(consecutive_failures=3, base_ejection_s=5, max_ejected_fraction=0.5), clock=clock
    )
    pool = ["a", "b", "c", "d"]
    for _ in range(3):
        detector.record("a", failed=True, pool=lambda: pool)
    assert detector.ejected("a")
    clock.now += 5.1
    assert not detector.ejected("a")
    for _ in range(3):
        detector.record("a", failed=True, pool=lambda: pool)
    clock.now += 5.1
    assert detector.ejected("a")  # second ejection: 10 s


def test_the_panic_threshold_stops_ejection() -> None:
    detector = OutlierDetector(OutlierPolicy(consecutive_failures=1, max_ejected_fraction=0.5), clock=FakeClock())
    pool = ["a", "b", "c", "d"]
    for name in pool:
        detector.record(name, failed=True, pool=lambda: pool)
    assert sum(detector.ejected(n) for n in pool) == 2


def test_a_success_resets_the_consecutive_count() -> None:
    detector = OutlierDetector(OutlierPolicy(consecutive_failures=3), clock=FakeClock())
    for failed in (True, True, False, True, True):
        detector.record("a", failed=failed, pool=lambda: ["a", "b"])
    assert not detector.ejected("a")


def test_policies_resolve_default_then_service_then_operation() -> None:
    policies = Policies.load(
        None,
        {
            "MESHOP_POLICY__default__timeout_s": "4",
            "MESHOP_POLICY__catalog__balancer": '"round_robin"',
            "MESHOP_POLICY__catalog__list__retry__attempts": "5",
        },
    )
    assert policies.for_operation("orders", "get").timeout_s == 4
    assert policies.for_operation("catalog", "get").balancer == "round_robin"
    assert policies.for_operation("catalog", "list").retry.attempts == 5
    assert policies.for_operation("catalog", "get").retry.attempts == 3


def test_an_operations_own_per_try_timeout_sits_between_the_default_and_the_callers_tables() -> None:
    policies = Policies(
        {
            "default": {"per_try_timeout_s": 4.0},
            "services": {
                "orders": {"per_try_timeout_s": 2.5},
                "catalog": {"operations": {"get": {"per_try_timeout_s": 0.2}}},
            },
        }
    )
    assert policies.for_operation("inventory", "stock", per_try_timeout_s=1.0).per_try_timeout_s == 1.0
    assert policies.for_operation("inventory", "stock").per_try_timeout_s == 4.0
    assert policies.for_operation("orders", "get", per_try_timeout_s=1.0).per_try_timeout_s == 2.5
    assert policies.for_operation("catalog", "get", per_try_timeout_s=1.0).per_try_timeout_s == 0.2
    assert policies.for_operation("catalog", "list", per_try_timeout_s=1.0).per_try_timeout_s == 1.0


def test_an_operation_states_a_positive_per_try_timeout() -> None:
    with pytest.raises(ValueError, match="per_try_timeout_s"):
        Operation("svc", "get", "GET", "/x", per_try_timeout_s=0)


def test_an_unknown_policy_setting_fails_at_start() -> None:
    with pytest.raises(ConfigError, match="timeuot_s"):
        Policies({"services": {"catalog": {"timeuot_s": 1}}})


def test_a_policy_value_of_the_wrong_type_or_out_of_range_fails_at_start() -> None:
    with pytest.raises(ConfigError, match="invalid resilience policy"):
        Policies({"services": {"catalog": {"breaker": {"failure_rate": "high"}}}})
    with pytest.raises(ConfigError, match="failure_rate and slow_call_rate"):
        Policies({"services": {"catalog": {"breaker": {"failure_rate": 1.5}}}})
    assert Policies({"services": {"catalog": {"timeout_s": 2}}}).for_operation("catalog", None).timeout_s == 2.0
