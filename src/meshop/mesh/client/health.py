"""Which instances of a service a caller may send to: passive health (breakers, outlier
ejection), active health checks of `/ready`, and panic mode when too many look unhealthy."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import structlog

from meshop.mesh.client.targets import Target, Targets
from meshop.mesh.registry.base import Instance, Registry, forget_departed
from meshop.mesh.transport.http_client import HttpError, Transport

log = structlog.get_logger("meshop.client")


class Health:
    """The healthy instances of each target, as this caller sees them."""

    def __init__(self, registry: Registry, targets: Targets, http: Transport) -> None:
        self._registry = registry
        self._targets = targets
        self._http = http

    def healthy(self, target: Target, registered: Sequence[Instance]) -> list[Instance]:
        """The `registered` instances whose breaker admits calls and that are not ejected.

        Panic mode (Envoy's): when fewer than `1 - max_ejected_fraction` of them are
        healthy, those whose breaker admits calls, ejected or not: better all than too few.
        """
        breakers = target.breakers
        available = []
        healthy = []
        for i in registered:
            breaker = breakers.get(i.instance_id) or self._targets.breaker(target, i.instance_id)
            if breaker.available():
                available.append(i)
                if not target.outliers.ejected(i.instance_id):
                    healthy.append(i)
        if len(healthy) < (1 - target.policy.outlier.max_ejected_fraction) * len(registered):
            return available
        return healthy

    @staticmethod
    def forget_departed(target: Target, registered: Sequence[Instance]) -> None:
        """Drop what is kept of instances no longer registered: every process that ever
        served (a restarted one is a new instance) would otherwise stay in each caller."""
        alive = {i.instance_id for i in registered}
        forget_departed(target.breakers, alive)
        target.outliers.forget(alive)
        target.balancer.forget(alive)

    async def check(self, *, timeout_s: float = 1.0) -> None:
        """Check `/ready` of every instance of every service this caller calls, once."""

        async def check(target: Target, instance: Instance) -> None:
            try:
                reply = await self._http.request(instance.address, instance.port, "GET", "/ready", {}, None, timeout_s)
                ready = reply.status == 200
            except (HttpError, TimeoutError):
                ready = False
            except Exception:  # a bug, or an error no transport maps: says nothing of the instance
                log.exception("health check failed", service=instance.service, instance=instance.instance_id)
                return  # and must not end the checks of the others, or `check_forever`
            target.outliers.checked(instance.instance_id, ready=ready)

        await asyncio.gather(
            *(check(target, i) for service, target in self._targets.items() for i in self._registry.instances(service))
        )

    async def check_forever(self, *, interval_s: float = 2.0) -> None:
        """Run `check` every `interval_s` (a background task of the process)."""
        while True:
            await self.check()
            await asyncio.sleep(interval_s)
