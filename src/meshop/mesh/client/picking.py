"""The instance a try goes to: the balancer's choice among the healthy instances not tried
yet, in the caller's zone first when it has one (docs/decisions/0024)."""

from __future__ import annotations

import random
from collections.abc import Collection, Sequence

from meshop.mesh.client.health import Health
from meshop.mesh.client.targets import Target
from meshop.mesh.client.zones import Locality, prefer_zone
from meshop.mesh.errors import NoInstancesError, ServiceUnavailable
from meshop.mesh.registry.base import Instance


class Unavailable(ServiceUnavailable):
    """A local rejection: every instance of the service is ejected or has its breaker open."""

    slug = "no-healthy-instance"
    retryable = False


class Picker:
    """Chooses instances for one caller (its `locality`, if zone-aware)."""

    def __init__(self, health: Health, *, locality: Locality | None, rng: random.Random) -> None:
        self._health = health
        self.locality = locality
        self._rng = rng

    def pick(
        self,
        service: str,
        target: Target,
        registered: Sequence[Instance],
        key: str | None,
        exclude: Collection[str],
    ) -> Instance:
        """Raises `NoInstancesError` when none is registered, `Unavailable` when none is healthy."""
        if not registered:
            raise NoInstancesError(f"no instance of {service!r} is registered")
        candidates = healthy = self._health.healthy(target, registered)
        if exclude:
            candidates = [i for i in healthy if i.instance_id not in exclude] or healthy
        if not candidates:
            raise Unavailable(
                f"every instance of {service!r} is unavailable (breaker open or ejected)", retry_after_s=1.0
            )
        if len(target.breakers) > 2 * len(registered) + 8:
            self._health.forget_departed(target, registered)
        locality = self.locality
        if locality is None:
            return target.balancer.pick(candidates, key=key)
        balancer = target.balancer
        choice = balancer.pick(prefer_zone(locality, candidates, registered, balancer.outstanding, self._rng), key=key)
        if choice.zone == locality.zone:
            target.local_picks += 1
        else:
            target.remote_picks += 1
        return choice
