"""GCRA rate limiting: parsing, bursts, accuracy under overload (fake clock), Redis sharing and outages."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid

import pytest
import structlog.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from meshop.mesh.errors import ConfigError
from meshop.mesh.resilience.ratelimit import Limit, LocalLimiter, RedisLimiter
from meshop.mesh.testing import FakeClock


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
    clock = FakeClock()
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
    clock = FakeClock()
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
    clock = FakeClock()
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
    limiter = LocalLimiter(clock=FakeClock(), max_keys=3)
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


def _closed_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Forwarder:
    """A TCP relay from a port of its own to the real Redis: Redis "comes back" when it starts."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", 6379)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            finally:
                dst.close()

        for task in (asyncio.create_task(pipe(reader, up_writer)), asyncio.create_task(pipe(up_reader, writer))):
            self._tasks.add(task)


@pytest.mark.integration
async def test_a_redis_outage_falls_back_to_local_limits_and_redis_is_used_again_once_back() -> None:
    import redis.asyncio as redis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    port = _closed_port()
    client = redis.Redis(host="127.0.0.1", port=port, retry=Retry(NoBackoff(), 0))
    clock = FakeClock()
    prefix = f"test:{uuid.uuid4().hex}:"
    limiter = RedisLimiter(client, prefix=prefix, clock=clock, backoff_s=1.0, warn_every_s=30.0)
    script_calls = 0
    script = limiter._script

    async def counted(**kwargs: object) -> object:
        nonlocal script_calls
        script_calls += 1
        return await script(**kwargs)

    limiter._script = counted
    limit = Limit(rate=1, burst=3)
    relay = _Forwarder(port)
    with structlog.testing.capture_logs() as logs:
        try:
            decisions = [await limiter.hit("user-1", limit) for _ in range(4)]  # Redis is down: no exception
            assert [d.allowed for d in decisions] == [True, True, True, False]  # the local limit still applies
            assert decisions[3].headers()["retry-after"] == "1"
            assert limiter.degraded
            assert script_calls == 1  # one failed call, then Redis is left alone for the backoff
            clock.now += 0.5
            assert (await limiter.hit("user-2", limit)).allowed
            assert script_calls == 1
            clock.now += 0.6  # past the backoff: Redis is tried again (still down)
            assert (await limiter.hit("user-2", limit)).allowed
            assert script_calls == 2
            assert sum("Redis rate limiting failed" in line["event"] for line in logs) == 1  # not one per request

            await relay.start()  # Redis is reachable on that port now
            clock.now += 1.1
            fresh = await limiter.hit("user-3", limit)
            assert script_calls == 3
            assert fresh.allowed
            assert not limiter.degraded
            assert await client.exists(prefix + "user-3") == 1  # the decision is in Redis's state
            assert any("Redis again" in line["event"] for line in logs)
        finally:
            keys = [k async for k in client.scan_iter(match=prefix + "*")]
            if keys:
                await client.delete(*keys)
            await client.aclose()
            await relay.stop()


async def test_a_slow_redis_call_is_cut_at_the_timeout_and_decided_locally() -> None:
    import redis.asyncio as redis

    client = redis.Redis(host="127.0.0.1", port=_closed_port())  # redis-py's default retries take seconds
    limiter = RedisLimiter(client, timeout_s=0.2)
    started = time.perf_counter()
    try:
        assert (await limiter.hit("k", Limit(rate=1, burst=1))).allowed
    finally:
        await client.aclose()
    assert time.perf_counter() - started < 1.5
    assert limiter.degraded
