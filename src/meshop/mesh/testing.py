"""Test tools for services built on the mesh, and for the mesh's own tests.

The mesh takes its clock and its sleep as arguments wherever time is behaviour (breakers,
retry budgets, rate limits, registry views, sagas, tokens): pass a `FakeClock` and move time
by hand instead of sleeping. Where a test waits for another process or a broker, it waits
on the condition with `eventually`, never for a fixed time.

    clock = FakeClock()
    breaker = CircuitBreaker(policy, clock=clock)
    clock.advance(5.0)
    await eventually(lambda: view.instances("catalog") == [], within_s=5)
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

__all__ = ["FakeClock", "eventually"]


class FakeClock:
    """A monotonic clock that moves only when told: `clock()` reads it, like `time.monotonic`.

    `sleep` is an injectable `asyncio.sleep` that lets the time pass at once.
    """

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a clock does not go back")
        self.now += seconds

    async def sleep(self, seconds: float) -> None:
        self.advance(max(0.0, seconds))


async def eventually(
    check: Callable[[], T | Awaitable[T]],
    *,
    within_s: float = 10.0,
    poll_s: float = 0.02,
    what: str | None = None,
) -> T:
    """The first truthy value of `check()` (a plain or an async callable), asked every `poll_s`.

    Raises AssertionError, naming `what` (default: the check's source), if none came within
    `within_s` of real time.
    """
    deadline = time.monotonic() + within_s
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what or _describe(check)} was not true within {within_s:g} s (last: {value!r})")
        await asyncio.sleep(poll_s)


def _describe(check: Callable[..., object]) -> str:
    try:
        return inspect.getsource(check).strip()
    except (OSError, TypeError):
        return repr(check)
