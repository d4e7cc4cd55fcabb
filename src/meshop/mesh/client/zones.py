"""Zone-aware picking: callers prefer their own zone, and spill over when it cannot cope.

Envoy's zone-aware routing, reduced to what a caller knows by itself: the instances of a
target registered in its zone, which of them its breakers and outlier detector still admit,
and how many requests it has in flight to each.

- Every healthy candidate in the caller's zone (the common case, one zone): nothing changes.
- None of them in the caller's zone: all candidates (they are all elsewhere).
- Some of the zone's instances failing: the zone keeps `overprovisioning` x its healthy
  fraction of the calls (Envoy's overprovisioning factor, 1.4: a zone that lost 2 of 7
  instances still takes every call) and the rest goes to the other zones' healthy instances.
- The zone overloaded (on average `overload_in_flight` or more requests in flight per
  healthy local instance): every healthy candidate, so that the balancer's in-flight
  counts spread the excess over the other zones.

Docs: docs/decisions/0024-zone-aware-balancing.md.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from meshop.mesh.registry.base import Instance

__all__ = ["Locality", "prefer_zone"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Locality:
    """Where a caller runs and how firmly it prefers instances there."""

    zone: str
    overprovisioning: float = 1.4
    overload_in_flight: int = 16

    def __post_init__(self) -> None:
        if self.overprovisioning < 1.0:
            raise ValueError(f"overprovisioning must be at least 1.0, not {self.overprovisioning}")
        if self.overload_in_flight < 1:
            raise ValueError(f"overload_in_flight must be at least 1, not {self.overload_in_flight}")


def prefer_zone(
    locality: Locality,
    candidates: Sequence[Instance],
    registered: Sequence[Instance],
    outstanding: Mapping[str, int],
    rng: random.Random,
) -> Sequence[Instance]:
    """The candidates a call should be balanced over, given the caller's `locality`.

    `candidates` are the healthy instances (a subset of `registered`); `outstanding` the
    caller's in-flight requests per instance id.
    """
    zone = locality.zone
    local: list[Instance] = []
    for instance in candidates:
        if instance.zone == zone:
            local.append(instance)
    if not local or len(local) == len(candidates):
        return candidates
    in_flight = 0
    for instance in local:
        in_flight += outstanding.get(instance.instance_id, 0)
    if in_flight >= locality.overload_in_flight * len(local):
        return candidates
    registered_here = 0
    for instance in registered:
        if instance.zone == zone:
            registered_here += 1
    share = locality.overprovisioning * len(local) / registered_here
    if share >= 1.0 or rng.random() < share:
        return local
    remote: list[Instance] = []
    for instance in candidates:
        if instance.zone != zone:
            remote.append(instance)
    return remote
