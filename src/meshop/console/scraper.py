"""The console's view of the running shop: every registered instance scraped on a beat.

Each round asks every instance the registry knows for its `/ready` and `/metrics` (with
the scrape token, so the instances may be on other hosts; mesh/security/scrape_token.py) and keeps
the last rounds, so figures can be computed over a window from counter deltas: only the rounds
and the samples they need (`keep`, `names`), as every sample kept costs ~0.5 kB. The probe is
injected: unit tests hand in canned expositions and a fake clock.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Container, Sequence
from dataclasses import dataclass

import aiohttp
import structlog

from meshop.analysis.samples import Samples, parse
from meshop.mesh.registry import Instance

log = structlog.get_logger("meshop.console.scraper")

#: What one instance answered: its health ("ready", "not ready (503)", "unreachable") and
#: the text of its /metrics (None when it did not answer with one).
Probe = Callable[[Instance], Awaitable[tuple[str, str | None]]]


@dataclass(frozen=True, slots=True)
class Seen:
    """One instance as a round found it."""

    instance: Instance
    health: str
    #: Its parsed /metrics; None when it did not answer.
    samples: Samples | None


@dataclass(frozen=True, slots=True)
class Round:
    """One scrape of every instance."""

    #: The console's monotonic clock when the round ended (rates use differences of it).
    at: float
    #: Wall-clock time of the same moment (what the page shows).
    wall: float
    seen: tuple[Seen, ...]

    def samples(self) -> dict[tuple[str, str], Samples]:
        """(service, instance id) → samples, for the instances that answered."""
        return {(s.instance.service, s.instance.instance_id): s.samples for s in self.seen if s.samples is not None}


class Scraper:
    """Scrapes every instance every `interval_s` and keeps the last `keep` rounds (of the
    samples in `names`, or all)."""

    def __init__(
        self,
        instances: Callable[[], Sequence[Instance]],
        probe: Probe,
        *,
        keep: int = 60,
        names: Container[str] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._instances = instances
        self._probe = probe
        self._clock = clock
        self._wall_clock = wall_clock
        self._names = names
        self.history: deque[Round] = deque(maxlen=keep)

    async def scrape(self) -> Round:
        """One round over every registered instance; kept in `history` and returned."""
        found = list(self._instances())
        answers = await asyncio.gather(*(self._probe(i) for i in found), return_exceptions=True)
        seen = []
        for instance, answer in zip(found, answers, strict=True):
            if isinstance(answer, BaseException):
                seen.append(Seen(instance, "unreachable", None))
                continue
            health, text = answer
            samples = None
            if text is not None:
                try:
                    samples = parse(text, self._names)
                except ValueError as exc:  # a malformed exposition: seen, but without figures
                    log.warning("unparsable metrics", instance=instance.key, error=str(exc))
            seen.append(Seen(instance, health, samples))
        done = Round(at=self._clock(), wall=self._wall_clock(), seen=tuple(seen))
        self.history.append(done)
        return done

    async def run_forever(self, interval_s: float) -> None:
        """Scrape now, then every `interval_s` (a round that fails is logged, not fatal)."""
        while True:
            started = self._clock()
            try:
                await self.scrape()
            except Exception as exc:
                log.warning("scrape failed", error=repr(exc))
            await asyncio.sleep(max(0.1, interval_s - (self._clock() - started)))


def http_probe(session: aiohttp.ClientSession, *, timeout_s: float = 1.5, token: bytes | None = None) -> Probe:
    """A probe that asks an instance for `/ready` and `/metrics` over HTTP (with `token`, the scrape token)."""
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    # Only /metrics is sent the token: /ready needs none, and a secret goes where it is needed.
    credentials = {"authorization": f"Bearer {token.decode()}"} if token is not None else None

    async def ready(instance: Instance) -> str:
        try:
            async with session.get(instance.url + "/ready", timeout=timeout, ssl=False) as resp:
                return "ready" if resp.status == 200 else f"not ready ({resp.status})"
        except (aiohttp.ClientError, TimeoutError):
            return "unreachable"

    async def metrics(instance: Instance) -> str | None:
        try:
            async with session.get(instance.url + "/metrics", headers=credentials, timeout=timeout, ssl=False) as resp:
                return await resp.text() if resp.status == 200 else None
        except (aiohttp.ClientError, TimeoutError):
            return None

    async def probe(instance: Instance) -> tuple[str, str | None]:
        health, text = await asyncio.gather(ready(instance), metrics(instance))
        return health, text

    return probe
