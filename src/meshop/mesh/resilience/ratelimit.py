"""Rate limiting with GCRA (the generic cell rate algorithm), local or shared through Redis.

GCRA keeps one number per key, the theoretical arrival time (TAT) of the next request
if requests came exactly at the configured rate. A request at `now` is admitted when
`TAT - now <= tolerance` (the burst allowance), and then moves TAT one emission interval
(1 / rate) on. It is a token bucket without a refill loop: exact, O(1), one value per
key, and it spreads admissions evenly instead of letting a window's whole quota through
at its start (the fixed-window problem).

`LocalLimiter` keeps TATs in this process (bounded, least recently used evicted);
`RedisLimiter` runs the same arithmetic in one Lua script on Redis's clock, so every
gateway replica shares the state. When Redis fails (down, unreachable, too slow), the
`RedisLimiter` degrades instead of failing the request: it decides with a `LocalLimiter`
of its own (the limits then hold per gateway instance), leaves Redis alone for a short
backoff, and warns at most once per interval (Kong's `fault_tolerant`, but still limiting).
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import structlog

from meshop.mesh.errors import ConfigError

log = structlog.get_logger("meshop.ratelimit")

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
_LIMIT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(\d*)\s*([smh])\s*(?:burst\s+(\d+))?\s*$")


@dataclass(frozen=True, slots=True)
class Limit:
    """`rate` requests per second on average, at most `burst` at once."""

    rate: float
    burst: int
    #: 1 / rate: how far one request moves the TAT (computed once: every decision reads it).
    interval_s: float = field(init=False, repr=False, compare=False)
    #: interval × (burst − 1): how far ahead of now the TAT may run.
    tolerance_s: float = field(init=False, repr=False, compare=False)
    #: The `RateLimit-Policy` header's value (the same for every decision under this limit).
    policy: str = field(init=False, repr=False, compare=False)
    #: The header lines every decision under this limit shares, formatted once.
    fixed_lines: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not (self.rate > 0 and math.isfinite(self.rate)) or self.burst < 1:
            raise ConfigError(f"a rate limit needs rate > 0 and burst >= 1, got {self.rate}/s burst {self.burst}")
        object.__setattr__(self, "interval_s", 1.0 / self.rate)
        object.__setattr__(self, "tolerance_s", self.interval_s * (self.burst - 1))
        object.__setattr__(self, "policy", f"{self.burst};w={max(1, round(self.burst / self.rate))}")
        object.__setattr__(self, "fixed_lines", f"ratelimit-limit: {self.burst}\r\nratelimit-policy: {self.policy}\r\n")

    @classmethod
    def parse(cls, text: str) -> Limit:
        """`"100/s"`, `"600/m"`, `"5/10s"`, optionally `"... burst 20"` (default: one second's worth)."""
        match = _LIMIT.match(text)
        if match is None:
            raise ConfigError(f"bad rate limit {text!r}: expected like '100/s', '600/m' or '10/s burst 20'")
        count, span, unit, burst = match.groups()
        rate = float(count) / ((float(span) if span else 1.0) * _UNITS[unit])
        return cls(rate=rate, burst=int(burst) if burst else max(1, math.ceil(rate)))

    def __str__(self) -> str:
        return f"{self.rate:g}/s burst {self.burst}"


class Decision:
    """One limit's answer to one request.

    A plain class, not a dataclass: compiled (decision 0014), its `__init__` is native code,
    where a dataclass's generated one stays interpreted; a gateway request makes three.
    """

    __slots__ = ("allowed", "limit", "remaining", "reset_s", "retry_after_s")

    def __init__(self, allowed: bool, limit: Limit, remaining: int, retry_after_s: float, reset_s: float) -> None:
        self.allowed: Final = allowed
        self.limit: Final = limit
        #: Requests that could still be made right now.
        self.remaining: Final = remaining
        #: Seconds until the next request would be admitted (0 when admitted).
        self.retry_after_s: Final = retry_after_s
        #: Seconds until the bucket is full again.
        self.reset_s: Final = reset_s

    def __repr__(self) -> str:
        return f"Decision(allowed={self.allowed}, {self.limit}, remaining={self.remaining})"

    def headers(self) -> dict[str, str]:
        """`RateLimit-*` headers (IETF httpapi draft) and `Retry-After` when refused."""
        headers = {
            "ratelimit-limit": str(self.limit.burst),
            "ratelimit-remaining": str(self.remaining),
            "ratelimit-reset": str(math.ceil(self.reset_s)),
            "ratelimit-policy": self.limit.policy,
        }
        if not self.allowed:
            headers["retry-after"] = str(max(1, math.ceil(self.retry_after_s)))
        return headers

    def header_lines(self) -> str:
        """`headers()` of an admitted request as HTTP header lines (`name: value\\r\\n` each)."""
        return (
            f"{self.limit.fixed_lines}ratelimit-remaining: {self.remaining}\r\n"
            f"ratelimit-reset: {math.ceil(self.reset_s)}\r\n"
        )


def _decision(limit: Limit, allowed: bool, ahead: float) -> Decision:
    """The decision, from how far ahead of now the key's TAT is (its new TAT when admitted).

    One formula for both limiters: the local one and Redis's script compute `ahead` alike.
    """
    if not allowed:
        return Decision(False, limit, 0, ahead - limit.tolerance_s, ahead)
    interval = limit.interval_s
    remaining = max(0, math.floor((limit.tolerance_s - ahead + interval) / interval + 1e-9))
    return Decision(True, limit, remaining, 0.0, ahead)


class Limiter(Protocol):
    async def hit(self, key: str, limit: Limit) -> Decision: ...


class LocalLimiter:
    """Per-process GCRA state, at most `max_keys` keys (least recently used evicted)."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic, max_keys: int = 100_000) -> None:
        self._clock = clock
        #: key -> TAT, least recently used first (a key is re-inserted on every hit).
        self._tats: dict[str, float] = {}
        self._max_keys = max_keys

    async def hit(self, key: str, limit: Limit) -> Decision:
        return self.hit_now(key, limit)

    def hit_now(self, key: str, limit: Limit) -> Decision:
        """GCRA for one request: admitted when the key's TAT is at most `tolerance` ahead of now."""
        now = self._clock()
        tats = self._tats
        tat = tats.pop(key, now)
        if tat < now:
            tat = now
        ahead = tat - now
        if ahead > limit.tolerance_s + 1e-9:  # admitting it would exceed the burst (with float slack)
            tats[key] = tat
            return _decision(limit, False, ahead)
        tats[key] = tat + limit.interval_s
        if len(tats) > self._max_keys:
            del tats[next(iter(tats))]
        return _decision(limit, True, ahead + limit.interval_s)


# KEYS[1] the key; ARGV: interval, tolerance (seconds). Returns {allowed, tat - now (µs)}.
# The clock is Redis's, so replicas on hosts with skewed clocks agree.
_GCRA_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
if tat - now > tolerance then
  return {0, tat - now}
end
local new_tat = tat + interval
redis.call('SET', KEYS[1], new_tat, 'PX', math.ceil((new_tat - now) / 1000) + 1000)
return {1, new_tat - now}
"""


class RedisLimiter:
    """GCRA state shared by every gateway replica, in Redis (one round trip per decision).

    A Redis failure (connection, timeout, or any Redis error; a call taking longer than
    `timeout_s` counts as one) is never the request's failure: the decision comes from a
    `LocalLimiter` of this process instead, and Redis is not asked again for `backoff_s`
    (a dead Redis costs one failed call per backoff, not one per request). A warning is
    logged at most once per `warn_every_s`; recovery is logged once.
    """

    def __init__(
        self,
        redis: Any,
        *,
        prefix: str = "meshop:rl:",
        timeout_s: float = 0.5,
        backoff_s: float = 1.0,
        warn_every_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # Imported here, not at the top: the redis package pulls in OpenTelemetry (~13 MB of
        # a process), which a gateway without Redis has no use for.
        from redis.exceptions import RedisError

        self._errors = (RedisError, OSError)  # TimeoutError is an OSError
        self._redis = redis
        self._prefix = prefix
        self._script = redis.register_script(_GCRA_LUA)
        self._timeout_s = timeout_s
        self._backoff_s = backoff_s
        self._warn_every_s = warn_every_s
        self._clock = clock
        self._fallback = LocalLimiter(clock=clock)
        self._retry_at = -math.inf  # Redis is skipped until then
        self._warned_at = -math.inf
        #: Whether the last decision came from the local fallback.
        self.degraded = False

    async def hit(self, key: str, limit: Limit) -> Decision:
        now = self._clock()
        if now < self._retry_at:
            return self._fallback.hit_now(key, limit)
        interval_us = round(limit.interval_s * 1e6)
        tolerance_us = round(limit.tolerance_s * 1e6)
        try:
            async with asyncio.timeout(self._timeout_s):
                allowed, ahead_us = await self._script(keys=[self._prefix + key], args=[interval_us, tolerance_us])
        except self._errors as exc:
            self._failed(exc, now)
            return self._fallback.hit_now(key, limit)
        if self.degraded:
            self.degraded = False
            log.warning("rate limiting is shared through Redis again")
        return _decision(limit, bool(allowed), int(ahead_us) / 1e6)

    def _failed(self, exc: BaseException, now: float) -> None:
        self.degraded = True
        self._retry_at = now + self._backoff_s
        if now - self._warned_at >= self._warn_every_s:
            self._warned_at = now
            log.warning(
                "Redis rate limiting failed; limiting per gateway instance until it answers",
                error=f"{type(exc).__name__}: {exc}",
                retry_in_s=self._backoff_s,
            )
