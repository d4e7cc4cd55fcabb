"""Rate-limit accuracy at a live gateway: offered twice the configured rate, it admits the
configured rate within ±5%, with the local limiter and with the Redis-backed one.

The load is open-loop (each request leaves at its scheduled time, whatever the answers
before it), so a slow answer cannot lower the offered rate. GCRA first lets the burst
through, then admits one request per emission interval; the rate is measured in a window
that starts once the burst is spent, and the whole run is checked against
`burst + rate × duration` as well.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass

import aiohttp
import pytest

from tests.e2e.api import Api
from tests.e2e.conftest import Shop, start_shop

# In `make test-system`: a load test (twice the limit, for seconds, on two shops).
pytestmark = [pytest.mark.e2e, pytest.mark.system, pytest.mark.timeout(120)]

RATE = 40.0  # per user, requests per second
BURST = 20
OFFERED = 2 * RATE
# The burst is spent after BURST / (OFFERED - RATE) = 0.5 s of load; start measuring later.
WARMUP_S = 1.0
MEASURE_S = 6.0
REDIS_URL = "redis://127.0.0.1:6379/0"
REDIS_PREFIX = "meshop:rl:"  # RedisLimiter's default


@dataclass(frozen=True, slots=True)
class Shot:
    sent_at: float  # seconds since the load started, by the schedule's clock
    status: int
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True, slots=True)
class LimitedShop:
    shop: Shop
    limiter: str  # "local" or "redis"


@pytest.fixture(scope="module", params=["local", "redis"])
def limited(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LimitedShop]:
    env = {
        "MESHOP_GATEWAY_RATE_LIMIT_PER_USER": f"{RATE:g}/s burst {BURST}",
        "MESHOP_GATEWAY_RATE_LIMIT_PER_IP": "off",  # every request comes from 127.0.0.1
        "MESHOP_GATEWAY_ACCESS_LOG": "false",
    }
    if request.param == "redis":
        with socket.create_connection(("127.0.0.1", 6379), timeout=2):  # a clear failure if Redis is not there
            pass
        env["MESHOP_GATEWAY_REDIS_URL"] = REDIS_URL
    running = start_shop(tmp_path_factory.mktemp(f"ratelimit-{request.param}"), env=env)
    yield LimitedShop(running, request.param)
    running.stop()


async def _shoot(session: aiohttp.ClientSession, url: str, token: str, sent_at: float) -> Shot:
    async with session.get(url, headers={"authorization": f"Bearer {token}"}) as resp:
        return Shot(sent_at, resp.status, {k.lower(): v for k, v in resp.headers.items()}, await resp.read())


async def open_loop(
    session: aiohttp.ClientSession, url: str, token: str, *, rate: float, duration_s: float
) -> list[Shot]:
    """Send `rate` requests per second for `duration_s`, each at its scheduled time."""
    start = time.monotonic()
    tasks = []
    for n in range(round(rate * duration_s)):
        delay = start + n / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        sent_at = time.monotonic() - start
        tasks.append(asyncio.create_task(_shoot(session, url, token, sent_at)))
    return await asyncio.gather(*tasks)


async def test_the_admitted_rate_is_the_configured_one_under_twice_the_load(limited: LimitedShop) -> None:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        api = Api(session, limited.shop.url)
        user_id = await api.signup()
        assert api.token is not None
        url = api.url + "/users/me"
        status, _, _ = await api.request("GET", "/users/me")
        assert status == 200
        await asyncio.sleep(BURST / RATE + 0.1)  # the probe's credit is back: the run starts with a full burst
        shots = await open_loop(session, url, api.token, rate=OFFERED, duration_s=WARMUP_S + MEASURE_S)
        if limited.limiter == "redis":  # every run signs up a new user: its key is its own
            await _assert_state_was_in_redis(REDIS_PREFIX + f"user:{user_id}")

    assert {s.status for s in shots} <= {200, 429}, sorted({s.status for s in shots})
    window = [s for s in shots if WARMUP_S <= s.sent_at < WARMUP_S + MEASURE_S]
    offered = len(window) / MEASURE_S
    admitted = sum(s.status == 200 for s in window) / MEASURE_S
    span_s = shots[-1].sent_at - shots[0].sent_at
    expected = BURST + RATE * span_s
    total = sum(s.status == 200 for s in shots)
    print(  # shown with -s, and with a failure
        f"{limited.limiter}: offered {offered:.1f}/s, admitted {admitted:.2f}/s (limit {RATE:g}/s) in the window; "
        f"{total} admitted in {span_s:.2f}s (expected {expected:.1f})"
    )
    assert offered >= 1.9 * RATE, f"the client offered only {offered:.1f}/s"
    assert abs(admitted - RATE) <= 0.05 * RATE, f"admitted {admitted:.2f}/s of {offered:.1f}/s offered; limit {RATE}/s"
    # The whole run, burst included: the burst at once, then the rate.
    assert abs(total - expected) <= 0.05 * expected, f"admitted {total} in {span_s:.2f}s; expected {expected:.0f}"

    refused = [s for s in shots if s.status == 429]
    assert len(refused) >= 0.4 * len(shots)
    for shot in refused:
        assert int(shot.headers["retry-after"]) >= 1
        assert shot.headers["ratelimit-limit"] == str(BURST)
        assert shot.headers["ratelimit-remaining"] == "0"
        assert int(shot.headers["ratelimit-reset"]) >= 0
        assert shot.headers["ratelimit-policy"].startswith(f"{BURST};w=")
        assert shot.headers["content-type"] == "application/problem+json"
        problem = json.loads(shot.body)
        assert problem["status"] == 429
        assert problem["type"] == "urn:meshop:problem:too-many-requests"
    for shot in shots:
        if shot.status == 200:
            assert shot.headers["ratelimit-limit"] == str(BURST)
            assert 0 <= int(shot.headers["ratelimit-remaining"]) < BURST


async def _assert_state_was_in_redis(key: str) -> None:
    """The gateway kept this user's GCRA state in Redis (not silently in its own memory)."""
    import redis.asyncio as redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        assert await client.exists(key), f"no {key} in Redis"
        await client.delete(key)
    finally:
        await client.aclose()
