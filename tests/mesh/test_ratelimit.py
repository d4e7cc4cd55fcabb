"""GCRA rate limiting: parsing, bursts, accuracy under overload (fake clock), Redis sharing."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshop.mesh.errors import ConfigError
from meshop.mesh.ratelimit import Limit, LocalLimiter, RedisLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("text", "rate", "burst"),
    [("100/s", 100, 100), ("600/m", 10, 10), ("5/10s", 0.5, 1), ("10/s burst 20", 10, 20), ("3600/h", 1, 1)],
)
def test_limits_parse(text: str, rate: float, burst: int) -> None:
    limit = Limit.parse(text)
    assert limit.rate == pytest.approx(rate)
    assert limit.burst == burst


@pytest.mark.parametrize("text", ["", "100", "100/x", "-1/s", "0/s", "ten/s", "10/s burst 0"])
def test_bad_limits_are_refused_with_a_clear_error(text: str) -> None:
    with pytest.raises(ConfigError):
        Limit.parse(text)


def test_a_burst_is_admitted_then_requests_are_spaced_at_the_rate() -> None:
    clock = Clock()
    limiter = LocalLimiter(clock=clock)
    limit = Limit(rate=10, burst=5)
    decisions = [limiter.hit_now("k", limit) for _ in range(6)]
    assert [d.allowed for d in decisions] == [True] * 5 + [False]
    assert [d.remaining for d in decisions[:5]] == [4, 3, 2, 1, 0]
    refused = decisions[5]
    assert refused.retry_after_s == pytest.approx(0.1)
    assert refused.headers()["retry-after"] == "1"
    assert refused.headers()["ratelimit-remaining"] == "0"
    clock.now += 0.1
    assert limiter.hit_now("k", limit).allowed
    assert not limiter.hit_now("k", limit).allowed
    assert limiter.hit_now("other key", limit).allowed  # keys are independent


@pytest.mark.parametrize("overload", [1.5, 2.0, 5.0])
def test_admitted_rate_is_within_5_percent_of_the_limit_under_overload(overload: float) -> None:
    clock = Clock()
    limiter = LocalLimiter(clock=clock)
    limit = Limit(rate=50, burst=10)
    duration, offered = 60.0, 50 * overload
    admitted = 0
    for n in range(int(duration * offered)):
        clock.now = 1000.0 + n / offered
        admitted += limiter.hit_now("k", limit).allowed
    assert admitted / duration == pytest.approx(limit.rate, rel=0.05)


@settings(max_examples=200, deadline=None)
@given(
    gaps=st.lists(st.floats(min_value=0, max_value=0.5, allow_nan=False), min_size=1, max_size=300),
    rate=st.floats(min_value=0.5, max_value=100),
    burst=st.integers(min_value=1, max_value=20),
)
def test_no_interval_admits_more_than_rate_times_length_plus_burst(gaps: list[float], rate: float, burst: int) -> None:
    clock = Clock()
    limiter = LocalLimiter(clock=clock)
    limit = Limit(rate=rate, burst=burst)
    admitted_at = []
    for gap in gaps:
        clock.now += gap
        if limiter.hit_now("k", limit).allowed:
            admitted_at.append(clock.now)
    for i, start in enumerate(admitted_at):
        for j in range(i, len(admitted_at)):
            count = j - i + 1
            assert count <= rate * (admitted_at[j] - start) + burst + 1e-6


def test_keys_are_bounded() -> None:
    limiter = LocalLimiter(clock=Clock(), max_keys=3)
    for n in range(10):
        limiter.hit_now(f"k{n}", Limit(rate=1, burst=1))
    assert len(limiter._tats) == 3


@pytest.mark.integration
async def test_redis_shares_the_state_between_gateway_replicas() -> None:
    import redis.asyncio as redis

    client = redis.Redis(host="127.0.0.1", port=6379)
    prefix = f"test:{uuid.uuid4().hex}:"
    try:
        first, second = RedisLimiter(client, prefix=prefix), RedisLimiter(client, prefix=prefix)
        limit = Limit(rate=1, burst=3)  # slow enough that the test's own time does not refill it
        decisions = [await (first if n % 2 else second).hit("user-1", limit) for n in range(4)]
        assert [d.allowed for d in decisions] == [True, True, True, False]
        assert [d.remaining for d in decisions[:3]] == [2, 1, 0]
        assert 0 < decisions[3].retry_after_s <= 1.0
        assert (await first.hit("user-2", limit)).allowed
    finally:
        keys = [k async for k in client.scan_iter(match=prefix + "*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()
