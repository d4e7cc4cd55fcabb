"""Contract tests every balancer passes, then each one's own behaviour (fake clock)."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshop.mesh.client.balancing import (
    BALANCERS,
    ConsistentHash,
    LeastOutstanding,
    PeakEwma,
    RoundRobin,
    Weighted,
    efficiency,
    make_balancer,
)
from meshop.mesh.registry import Instance
from meshop.mesh.testing import FakeClock


def instances(n: int, weights: list[int] | None = None) -> list[Instance]:
    weights = weights or [100] * n
    return [
        Instance(service="s", instance_id=f"i{k}", address="127.0.0.1", port=1000 + k, pid=1, weight=weights[k])
        for k in range(n)
    ]


@pytest.fixture(params=sorted(BALANCERS))
def balancer_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_efficiency_is_the_seed_formula() -> None:
    assert efficiency([100, 110, 90]) == pytest.approx(0.80)
    assert efficiency([]) == 1.0
    assert efficiency([0, 0]) == 1.0
    assert efficiency([5, 5, 5]) == 1.0


def test_every_balancer_picks_only_among_the_candidates(balancer_name: str) -> None:
    balancer = make_balancer(balancer_name, rng=random.Random(1), clock=FakeClock(100.0))
    pool = instances(4)
    for n in range(200):
        assert balancer.pick(pool, key=f"k{n}") in pool
    assert balancer.pick(pool[:1]) == pool[0]


def test_every_balancer_refuses_an_empty_pool(balancer_name: str) -> None:
    with pytest.raises(ValueError, match="no candidates"):
        make_balancer(balancer_name).pick([])


def test_every_balancer_reports_efficiency_one_before_any_request(balancer_name: str) -> None:
    balancer = make_balancer(balancer_name, clock=FakeClock(100.0))
    assert balancer.efficiency() == 1.0
    assert balancer.window_efficiency() == 1.0


def test_every_balancer_spreads_keyless_uniform_load(balancer_name: str) -> None:
    """With equal instances, no feedback and many requests, every instance gets traffic."""
    balancer = make_balancer(balancer_name, rng=random.Random(7), clock=FakeClock(100.0))
    pool = instances(3)
    for _ in range(3000):
        chosen = balancer.pick(pool)
        balancer.started(chosen)
        balancer.finished(chosen, 0.001, ok=True)
    assert set(balancer.sent()) == {"i0", "i1", "i2"}
    assert balancer.efficiency() > 0.8


def test_every_balancer_counts_what_it_sent_in_a_sliding_window(balancer_name: str) -> None:
    clock = FakeClock(100.0)
    balancer = make_balancer(balancer_name, rng=random.Random(3), clock=clock, window_s=10)
    pool = instances(2)
    for _ in range(1000):
        balancer.pick([pool[0]])
    clock.now += 30  # the skewed burst leaves the window
    for _ in range(1000):
        balancer.pick(pool)
    assert balancer.efficiency() < 0.5
    assert balancer.window_efficiency() > 0.8


def test_round_robin_is_exactly_even() -> None:
    balancer = RoundRobin()
    pool = instances(3)
    seen = Counter(balancer.pick(pool).instance_id for _ in range(300))
    assert seen == {"i0": 100, "i1": 100, "i2": 100}
    assert balancer.efficiency() == 1.0


def test_weighted_follows_weights_smoothly() -> None:
    balancer = Weighted()
    pool = instances(3, weights=[5, 1, 1])
    picks = [balancer.pick(pool).instance_id for _ in range(70)]
    assert Counter(picks) == {"i0": 50, "i1": 10, "i2": 10}
    longest = max(len(run) for run in "".join(p[-1] for p in picks).replace("1", " ").replace("2", " ").split())
    assert longest < 5  # smooth: never all five of its turns in a row


def test_least_outstanding_avoids_the_busy_instance() -> None:
    balancer = LeastOutstanding(rng=random.Random(2))
    pool = instances(3)
    for _ in range(50):
        balancer.started(pool[0])
    picks = Counter(balancer.pick(pool).instance_id for _ in range(300))
    assert picks["i0"] == 0


def test_peak_ewma_starves_a_slow_instance_then_retries_it_after_decay() -> None:
    clock = FakeClock(100.0)
    balancer = PeakEwma(rng=random.Random(4), clock=clock, decay_s=10.0)
    pool = instances(3)
    latency = {"i0": 0.050, "i1": 0.001, "i2": 0.001}
    picks: Counter[str] = Counter()
    for _ in range(2000):
        chosen = balancer.pick(pool)
        picks[chosen.instance_id] += 1
        balancer.started(chosen)
        clock.now += 0.002
        balancer.finished(chosen, latency[chosen.instance_id], ok=True)
    assert picks["i0"] / 2000 < 0.10
    latency["i0"] = 0.001  # it recovers: once its penalty decays it is tried again
    clock.now += 60
    later = Counter()
    for _ in range(600):
        chosen = balancer.pick(pool)
        later[chosen.instance_id] += 1
        balancer.started(chosen)
        clock.now += 0.002
        balancer.finished(chosen, latency[chosen.instance_id], ok=True)
    assert later["i0"] > 100


def test_consistent_hash_keeps_keys_and_moves_few_when_an_instance_leaves() -> None:
    balancer = ConsistentHash(vnodes=160)
    pool = instances(5)
    before = {f"user-{n}": balancer.pick(pool, key=f"user-{n}").instance_id for n in range(2000)}
    assert before == {k: balancer.pick(pool, key=k).instance_id for k in before}
    remaining = [i for i in pool if i.instance_id != "i3"]
    after = {k: balancer.pick(remaining, key=k).instance_id for k in before}
    moved = sum(1 for k in before if before[k] != after[k])
    assert moved == sum(1 for v in before.values() if v == "i3")  # only i3's keys moved
    assert 0.1 < moved / len(before) < 0.3


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=10_000), min_size=1, max_size=20))
def test_efficiency_is_at_most_one(loads: list[int]) -> None:
    assert efficiency(loads) <= 1.0
