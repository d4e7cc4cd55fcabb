"""Client-side load balancers: pick one instance of a service for each request."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Protocol

from meshop.mesh.registry.base import Instance


class Balancer(Protocol):
    """Chooses an instance among the healthy candidates, and keeps what it sent."""

    def pick(self, candidates: Sequence[Instance]) -> Instance: ...

    def efficiency(self) -> float: ...


class RoundRobin:
    """Each instance in turn; with n instances, each gets every n-th request."""

    def __init__(self) -> None:
        self._next = 0
        self.sent: Counter[str] = Counter()

    def pick(self, candidates: Sequence[Instance]) -> Instance:
        if not candidates:
            raise ValueError("no candidates to pick from")
        ordered = sorted(candidates, key=lambda i: i.instance_id) if len(candidates) > 1 else candidates
        choice = ordered[self._next % len(ordered)]
        self._next += 1
        self.sent[choice.instance_id] += 1
        return choice

    def efficiency(self) -> float:
        return efficiency(list(self.sent.values()))


def efficiency(loads: Sequence[float]) -> float:
    """The seed's load-balancing efficiency E = 1 − (max − min) / avg; 1.0 with no load."""
    if not loads or sum(loads) == 0:
        return 1.0
    average = sum(loads) / len(loads)
    return 1.0 - (max(loads) - min(loads)) / average
