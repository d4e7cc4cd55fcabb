"""What a registry holds (instances) and the local view every client reads from."""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Sequence
from typing import Any, Protocol

import msgspec

Clock = Callable[[], float]


class Instance(msgspec.Struct, frozen=True, kw_only=True):
    """One running process of a service, as it registers itself."""

    service: str
    instance_id: str
    address: str
    port: int
    pid: int
    zone: str = "local"
    version: str = "0"
    weight: int = 100
    started_at: float = 0.0
    #: Wall-clock time of the registration or heartbeat that wrote this value.
    heartbeat_at: float = 0.0

    @property
    def key(self) -> str:
        return f"{self.service}.{self.instance_id}"

    @property
    def url(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"http://{host}:{self.port}"


def forget_departed(table: dict[str, Any], alive: Collection[str]) -> None:
    """Drop the entries of a table keyed by instance id whose instance is not in `alive`."""
    for instance_id in [i for i in table if i not in alive]:
        del table[instance_id]


class Registry(Protocol):
    """Registration and discovery of service instances.

    `instances()` is a synchronous read of a local cache: discovery costs a dict lookup.
    """

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def register(self, instance: Instance) -> None: ...

    async def deregister(self, instance: Instance) -> None: ...

    def instances(self, service: str) -> Sequence[Instance]: ...


class RegistryView:
    """The local cache of registrations that discovery reads.

    Fed by registry events (put / delete). As a second line of defence against a lost
    expiry event, an instance not refreshed for `stale_after_s` (by this process's clock,
    so clock skew between hosts does not matter) is not returned, unless expiry is
    suspended: while the registry itself is unreachable, the last known view is better
    than none.
    """

    def __init__(self, *, stale_after_s: float, clock: Clock = time.monotonic) -> None:
        self._by_service: dict[str, dict[str, Instance]] = {}
        self._seen_at: dict[str, float] = {}
        self._revisions: dict[str, int] = {}
        self._stale_after_s = stale_after_s
        self._clock = clock
        self.expiry_suspended = False
        # Every call picks from this list: keep each service's answer until it can change
        # (a put, a removal, or the first of its instances going stale).
        self._answers: dict[str, tuple[list[Instance], float]] = {}

    def put(self, instance: Instance, *, revision: int | None = None) -> None:
        """`instance`, written now; with the registry's `revision` of the write, a value seen
        before (a watch that starts again lists every entry) is no new sign of life."""
        key = instance.key
        if revision is not None:
            if revision == self._revisions.get(key) and key in self._seen_at:
                return
            self._revisions[key] = revision
        self._by_service.setdefault(instance.service, {})[instance.instance_id] = instance
        self._seen_at[key] = self._clock()
        self._answers.pop(instance.service, None)

    def remove(self, key: str) -> tuple[Instance, float] | None:
        """Forget `key`; gives what was known of it (its instance and when it was last seen)."""
        service, _, instance_id = key.partition(".")
        seen_at = self._seen_at.pop(key, None)
        self._revisions.pop(key, None)
        instance = self._by_service.get(service, {}).pop(instance_id, None)
        self._answers.pop(service, None)
        return None if instance is None or seen_at is None else (instance, seen_at)

    def restore(self, instance: Instance, seen_at: float) -> None:
        """Put back what `remove` gave, as last seen then (not now: a dead one stays stale)."""
        self.put(instance)
        self._seen_at[instance.key] = seen_at

    def __len__(self) -> int:
        return len(self._seen_at)

    def age(self, key: str) -> float | None:
        """Seconds since `key` was last put (None: not in the view)."""
        seen_at = self._seen_at.get(key)
        return None if seen_at is None else self._clock() - seen_at

    def instances(self, service: str) -> list[Instance]:
        """The live instances of `service` (a shared list: do not modify it)."""
        found = self._by_service.get(service)
        if not found:
            return []
        if self.expiry_suspended:
            return list(found.values())
        now = self._clock()
        cached = self._answers.get(service)
        if cached is not None and now < cached[1]:
            return cached[0]
        oldest = now - self._stale_after_s
        live = [i for i in found.values() if self._seen_at.get(i.key, 0.0) >= oldest]
        first_stale = min((self._seen_at[i.key] for i in live), default=now) + self._stale_after_s
        self._answers[service] = (live, first_stale)
        return live

    def services(self) -> list[str]:
        return sorted(s for s, found in self._by_service.items() if found)


class ExpiryGuard:
    """Eureka's self-preservation, for a registry whose entries expire.

    One instance's expiry is a death. Expiries of more than half the view within
    `window_s` are the registry's doing: a JetStream bucket's new leader, elected after
    a node is lost, expires every entry that no write refreshed during its election,
    live instances' too, and those write themselves back at their next heartbeat. Such
    a burst is undone: the expired entries go back into the view as they were (last
    seen before the burst), and the caller suspends expiry for a TTL, after which an
    entry nobody refreshed is stale. The price, as in Eureka: when most instances really
    die at once, they leave the view one TTL later (callers' breakers and outlier
    ejection stop sending to them sooner).
    """

    def __init__(self, view: RegistryView, *, window_s: float, clock: Clock = time.monotonic) -> None:
        self._view = view
        self._window_s = window_s
        self._clock = clock
        #: The entries expired within the window: key -> (instance, last seen, expired at).
        self._recent: dict[str, tuple[Instance, float, float]] = {}

    def expire(self, key: str) -> bool:
        """Apply the expiry of `key`; True when it completes a mass expiry, which is then undone."""
        now = self._clock()
        oldest = now - self._window_s
        self._recent = {k: v for k, v in self._recent.items() if v[2] >= oldest}
        removed = self._view.remove(key)
        if removed is not None:
            self._recent[key] = (removed[0], removed[1], now)
        expired = len(self._recent)
        if expired < 2 or expired <= len(self._view):
            return False
        for instance, seen_at, _ in self._recent.values():
            self._view.restore(instance, seen_at)
        self._recent.clear()
        return True
