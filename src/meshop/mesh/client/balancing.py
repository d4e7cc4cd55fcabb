"""Client-side load balancers: pick one instance of a service for each request.

Every balancer sees the healthy candidates of one target service, hears when a request
to an instance starts and finishes (latency, success), and reports the seed's
load-balancing efficiency E = 1 − (max − min) / avg over the requests it sent to each
current instance, in total and over a sliding window. E is 1 when nothing was sent.

- `RoundRobin` — each instance in turn.
- `RandomChoice` — uniformly at random.
- `Weighted` — smooth weighted round-robin by the instances' registered `weight`.
- `LeastOutstanding` — power of two choices on in-flight requests.
- `PeakEwma` — power of two choices on peak-sensitive EWMA latency × (in-flight + 1),
  the seed's adaptive balancer (Finagle/Linkerd): a latency spike counts at once, and an
  idle instance's cost decays so it is tried again after it recovers.
- `ConsistentHash` — a ring with virtual nodes: the same key goes to the same instance
  while the set of instances is stable, and only ~1/n of keys move when it changes.
"""

from __future__ import annotations

import bisect
import hashlib
import math
import random
import time
from collections import Counter, deque
from collections.abc import Callable, Collection, Sequence
from typing import Any, ClassVar, Protocol

from meshop.mesh.registry.base import Instance, forget_departed

Clock = Callable[[], float]


class Balancer(Protocol):
    """Chooses an instance among the healthy candidates, and keeps what it sent."""

    #: Requests in flight per instance id (started, not yet finished).
    outstanding: dict[str, int]

    @property
    def name(self) -> str: ...

    def pick(self, candidates: Sequence[Instance], *, key: str | None = None) -> Instance: ...

    def started(self, instance: Instance) -> None: ...

    def finished(self, instance: Instance, latency_s: float, *, ok: bool) -> None: ...

    def efficiency(self) -> float: ...

    def window_efficiency(self) -> float: ...

    def sent(self) -> dict[str, int]: ...

    def forget(self, alive: Collection[str]) -> None: ...


def efficiency(loads: Sequence[float]) -> float:
    """The seed's load-balancing efficiency E = 1 − (max − min) / avg; 1.0 with no load."""
    if not loads or sum(loads) == 0:
        return 1.0
    average = sum(loads) / len(loads)
    return 1.0 - (max(loads) - min(loads)) / average


class _Counting:
    """Bookkeeping shared by every balancer: what was sent where, and in-flight counts.

    Subclasses spell out the base's options rather than pass `**kwargs` on: mypyc (2.4)
    compiles neither a method taking keyword-only defaults and `**kwargs` together nor
    `super().__init__(**kwargs)` correctly.
    """

    name: ClassVar[str] = "base"

    def __init__(self, *, clock: Clock = time.monotonic, window_s: int = 10, rng: random.Random | None = None) -> None:
        self._clock = clock
        self._window_s = window_s
        self._rng = rng or random.Random()
        # Plain dicts, not Counters: compiled, `d[k] = d.get(k, 0) + 1` is two native dict
        # operations, where a Counter (a dict subclass) takes the generic item protocol.
        self._total: dict[str, int] = {}
        #: Sends per second of the window, oldest first; the last is the current second's.
        self._buckets: deque[tuple[int, dict[str, int]]] = deque()
        #: The current second and its bucket, the deque's last, kept: compiled, reading a
        #: deque's item back is a generic call.
        self._second = -1
        self._bucket: dict[str, int] = {}
        #: The last pick's candidates (whose spread `efficiency` reports), kept as given: ids are read only then.
        self._current: Sequence[Instance] = ()
        self.outstanding: dict[str, int] = {}

    def pick(self, candidates: Sequence[Instance], *, key: str | None = None) -> Instance:
        if not candidates:
            raise ValueError("no candidates to pick from")
        self._current = candidates
        choice = candidates[0] if len(candidates) == 1 else self._choose(candidates, key)
        self._count(choice.instance_id)
        return choice

    def _choose(self, candidates: Sequence[Instance], key: str | None) -> Instance:
        raise NotImplementedError

    def _two(self, candidates: Sequence[Instance]) -> tuple[Instance, Instance]:
        """Two distinct candidates at random (cheaper than random.sample)."""
        n = len(candidates)
        i = self._rng.randrange(n)
        j = self._rng.randrange(n - 1)
        return candidates[i], candidates[j + (j >= i)]

    def _count(self, instance_id: str) -> None:
        total = self._total
        total[instance_id] = total.get(instance_id, 0) + 1
        second = int(self._clock())
        if second != self._second:  # a new second: its bucket, and the window's oldest dropped
            self._second, self._bucket = second, {}
            self._buckets.append((second, self._bucket))
            while self._buckets and self._buckets[0][0] <= second - self._window_s:
                self._buckets.popleft()
        bucket = self._bucket
        bucket[instance_id] = bucket.get(instance_id, 0) + 1

    def started(self, instance: Instance) -> None:
        outstanding = self.outstanding
        outstanding[instance.instance_id] = outstanding.get(instance.instance_id, 0) + 1

    def finished(self, instance: Instance, latency_s: float, *, ok: bool) -> None:
        self._done(instance.instance_id)

    def _done(self, instance_id: str) -> None:
        outstanding = self.outstanding
        count = outstanding.get(instance_id, 0)
        if count > 0:
            outstanding[instance_id] = count - 1

    def sent(self) -> dict[str, int]:
        return dict(self._total)

    def forget(self, alive: Collection[str]) -> None:
        """Drop what is kept of instances not in `alive` (departed ones); the window's
        buckets age out on their own."""
        forget_departed(self._total, alive)
        forget_departed(self.outstanding, alive)

    def efficiency(self) -> float:
        return efficiency([self._total.get(c.instance_id, 0) for c in self._current])

    def window_efficiency(self) -> float:
        oldest = int(self._clock()) - self._window_s
        window: Counter[str] = Counter()
        for second, counts in self._buckets:
            if second > oldest:
                window.update(counts)
        return efficiency([window[c.instance_id] for c in self._current])


class RoundRobin(_Counting):
    """Each healthy instance in turn, in instance-id order (the key is ignored)."""

    name: ClassVar[str] = "round_robin"

    def __init__(self, *, clock: Clock = time.monotonic, window_s: int = 10, rng: random.Random | None = None) -> None:
        super().__init__(clock=clock, window_s=window_s, rng=rng)
        self._next = 0

    def _choose(self, candidates: Sequence[Instance], key: str | None) -> Instance:
        ordered = sorted(candidates, key=lambda i: i.instance_id)
        choice = ordered[self._next % len(ordered)]
        self._next += 1
        return choice


class RandomChoice(_Counting):
    name: ClassVar[str] = "random"

    def _choose(self, candidates: Sequence[Instance], key: str | None) -> Instance:
        return self._rng.choice(list(candidates))


class Weighted(_Counting):
    """Smooth weighted round-robin (nginx): no bursts to the heaviest instance."""

    name: ClassVar[str] = "weighted"

    def __init__(self, *, clock: Clock = time.monotonic, window_s: int = 10, rng: random.Random | None = None) -> None:
        super().__init__(clock=clock, window_s=window_s, rng=rng)
        self._current_weight: dict[str, int] = {}

    def forget(self, alive: Collection[str]) -> None:
        super().forget(alive)
        forget_departed(self._current_weight, alive)

    def _choose(self, candidates: Sequence[Instance], key: str | None) -> Instance:
        total = 0
        best: Instance | None = None
        for inst in sorted(candidates, key=lambda i: i.instance_id):
            weight = max(0, inst.weight)
            total += weight
            value = self._current_weight.get(inst.instance_id, 0) + weight
            self._current_weight[inst.instance_id] = value
            if best is None or value > self._current_weight[best.instance_id]:
                best = inst
        assert best is not None
        self._current_weight[best.instance_id] -= total
        return best


class LeastOutstanding(_Counting):
    """Power of two choices on in-flight requests."""

    name: ClassVar[str] = "least_outstanding"

    def _choose(self, candidates: Sequence[Instance], key: str | None) -> Instance:
        a, b = self._two(candidates)
        outstanding = self.outstanding
        return a if outstanding.get(a.instance_id, 0) <= outstanding.get(b.instance_id, 0) else b


class PeakEwma(_Counting):
    """Power of two choices on peak-EWMA latency × (in-flight + 1)."""

    name: ClassVar[str] = "peak_ewma"

    def __init__(
        self,
        *,
        decay_s: float = 10.0,
        default_rtt_s: float = 0.001,
        clock: Clock = time.monotonic,
        window_s: int = 10,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(clock=clock, window_s=window_s, rng=rng)
        self._decay_s = decay_s
        self._default_rtt_s = default_rtt_s
        self._ewma: dict[str, tuple[float, float]] = {}  # id -> (cost, stamp)

    def forget(self, alive: Collection[str]) -> None:
        super().forget(alive)
        forget_departed(self._ewma, alive)

    def cost(self, instance_id: str) -> float:
        """Decayed latency estimate × (in-flight + 1)."""
        return self._latency(instance_id) * (self.outstanding.get(instance_id, 0) + 1)

    def _latency(self, instance_id: str) -> float:
        found = self._ewma.get(instance_id)
        if found is None:
            return self._default_rtt_s
        value, stamp = found
        # Decay toward zero while nothing is observed, so an instance that was slow is
        # retried once its penalty has aged out (Finagle's observe(0) on read).
        return value * self._weight(self._clock(), stamp)

    def _weight(self, now: float, stamp: float) -> float:
        """How much of an estimate stamped at `stamp` is left at `now`."""
        return math.exp(-max(0.0, now - stamp) / self._decay_s)

    def _choose(self, candidates: Sequence[Instance], key: str | None) -> Instance:
        a, b = self._two(candidates)
        return a if self.cost(a.instance_id) <= self.cost(b.instance_id) else b

    def finished(self, instance: Instance, latency_s: float, *, ok: bool) -> None:
        instance_id = instance.instance_id
        self._done(instance_id)
        now = self._clock()
        found = self._ewma.get(instance_id)
        if found is None:
            value = latency_s
        else:
            # The estimate decayed to now (as `_latency` reads it); a peak counts at once,
            # anything else is blended in with the same weight.
            w = self._weight(now, found[1])
            current = found[0] * w
            value = latency_s if latency_s > current else current * w + latency_s * (1 - w)
        self._ewma[instance_id] = (value, now)


class ConsistentHash(_Counting):
    """A hash ring with `vnodes` points per instance; keyless requests go anywhere."""

    name: ClassVar[str] = "consistent_hash"

    def __init__(
        self, *, vnodes: int = 160, clock: Clock = time.monotonic, window_s: int = 10, rng: random.Random | None = None
    ) -> None:
        super().__init__(clock=clock, window_s=window_s, rng=rng)
        self._vnodes = vnodes
        self._ring_ids: frozenset[str] = frozenset()
        self._points: list[int] = []
        self._owners: list[str] = []

    @staticmethod
    def _hash(text: str) -> int:
        return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")

    def _ring(self, candidates: Sequence[Instance]) -> None:
        ids = frozenset(c.instance_id for c in candidates)
        if ids == self._ring_ids:
            return
        points = sorted((self._hash(f"{i}#{n}"), i) for i in ids for n in range(self._vnodes))
        self._points = [p for p, _ in points]
        self._owners = [o for _, o in points]
        self._ring_ids = ids

    def _choose(self, candidates: Sequence[Instance], key: str | None) -> Instance:
        self._ring(candidates)
        h = self._hash(key) if key is not None else self._rng.getrandbits(64)
        index = bisect.bisect(self._points, h) % len(self._points)
        owner = self._owners[index]
        return next(c for c in candidates if c.instance_id == owner)


BALANCERS: dict[str, type[_Counting]] = {
    cls.name: cls for cls in (RoundRobin, RandomChoice, Weighted, LeastOutstanding, PeakEwma, ConsistentHash)
}


def make_balancer(name: str, **kwargs: Any) -> Balancer:
    """A balancer by its configuration name (`round_robin`, `peak_ewma`, ...)."""
    try:
        cls = BALANCERS[name]
    except KeyError:
        raise ValueError(f"unknown balancer {name!r}; choose one of {', '.join(BALANCERS)}") from None
    return cls(**kwargs)
