"""The seeds' math: load-balancing efficiency, serial reliability, Little's law."""

from __future__ import annotations

import math
from collections.abc import Sequence

from meshop.mesh.client.balancing import efficiency

__all__ = ["efficiency", "littles_law", "serial_reliability"]


def serial_reliability(step_reliabilities: Sequence[float]) -> float:
    """R = Π R(s_i): a request that needs every step succeeds only if each one does."""
    if not step_reliabilities:
        raise ValueError("at least one reliability is needed")
    if any(not 0.0 <= r <= 1.0 for r in step_reliabilities):
        raise ValueError("reliabilities are probabilities in [0, 1]")
    return math.prod(step_reliabilities)


def littles_law(*, arrival_rate: float, time_in_system: float) -> float:
    """L = λW: the average number of requests in the system."""
    if arrival_rate < 0 or time_in_system < 0:
        raise ValueError("arrival rate and time in system cannot be negative")
    return arrival_rate * time_in_system
