"""A registry with a fixed set of instances, for tests and fixed topologies."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from meshop.mesh.registry.base import Instance


class StaticRegistry:
    """Holds exactly the instances it is given; `register` adds, `deregister` removes."""

    def __init__(self, instances: Iterable[Instance] = ()) -> None:
        self._instances: dict[str, Instance] = {i.key: i for i in instances}

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def register(self, instance: Instance) -> None:
        self._instances[instance.key] = instance

    async def deregister(self, instance: Instance) -> None:
        self._instances.pop(instance.key, None)

    def instances(self, service: str) -> Sequence[Instance]:
        return [i for i in self._instances.values() if i.service == service]
