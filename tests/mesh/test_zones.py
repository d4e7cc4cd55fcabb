"""Zone-aware picking: own zone first, spill-over when it fails or is overloaded."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from meshop.mesh.client.client import ServiceClient
from meshop.mesh.client.metrics import ClientMetrics
from meshop.mesh.client.zones import Locality, prefer_zone
from meshop.mesh.registry import Instance, StaticRegistry
from meshop.mesh.resilience.config import Policies
from meshop.mesh.telemetry.metrics import Metrics


def instances(**zones: int) -> list[Instance]:
    """`a=3, b=2`: three instances in zone a (a0..a2) and two in zone b."""
    return [
        Instance(service="svc", instance_id=f"{zone}{n}", address="127.0.0.1", port=1000 + n, pid=0, zone=zone)
        for zone, count in zones.items()
        for n in range(count)
    ]


def zones_of(picked: list[Instance]) -> Counter[str]:
    return Counter(i.zone for i in picked)


def test_all_candidates_in_the_callers_zone_are_returned_as_they_are() -> None:
    everyone = instances(a=3)
    assert prefer_zone(Locality(zone="a"), everyone, everyone, {}, random.Random(1)) is everyone


def test_a_caller_with_no_instance_in_its_zone_uses_every_candidate() -> None:
    everyone = instances(b=2, c=2)
    assert prefer_zone(Locality(zone="a"), everyone, everyone, {}, random.Random(1)) is everyone


def test_a_healthy_zone_takes_every_call() -> None:
    everyone = instances(a=2, b=2)
    rng = random.Random(1)
    for _ in range(200):
        assert {i.zone for i in prefer_zone(Locality(zone="a"), everyone, everyone, {}, rng)} == {"a"}


def test_a_zone_within_the_overprovisioning_factor_still_takes_every_call() -> None:
    registered = instances(a=7, b=7)
    healthy = [i for i in registered if i.instance_id not in {"a0", "a1"}]  # 5/7 x 1.4 = 1.0
    rng = random.Random(1)
    for _ in range(200):
        assert {i.zone for i in prefer_zone(Locality(zone="a"), healthy, registered, {}, rng)} == {"a"}


def test_a_failing_zone_keeps_its_overprovisioned_share_and_spills_the_rest() -> None:
    registered = instances(a=4, b=4)
    healthy = [i for i in registered if i.instance_id not in {"a0", "a1", "a2"}]  # 1/4 healthy here
    rng = random.Random(7)
    chosen = Counter[str]()
    for _ in range(4000):
        chosen.update(i.zone for i in prefer_zone(Locality(zone="a"), healthy, registered, {}, rng)[:1])
    local_share = chosen["a"] / 4000
    assert local_share == pytest.approx(1.4 * 1 / 4, abs=0.03)  # the rest went to zone b's instances


def test_an_overloaded_zone_opens_every_zone_to_the_balancer() -> None:
    everyone = instances(a=2, b=2)
    locality = Locality(zone="a", overload_in_flight=4)
    assert {i.zone for i in prefer_zone(locality, everyone, everyone, {"a0": 3, "a1": 4}, random.Random(1))} == {"a"}
    assert prefer_zone(locality, everyone, everyone, {"a0": 4, "a1": 4}, random.Random(1)) is everyone


@pytest.mark.parametrize("options", [{"overprovisioning": 0.9}, {"overload_in_flight": 0}])
def test_nonsense_options_are_refused(options: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must be at least"):
        Locality(zone="a", **options)  # type: ignore[arg-type]


def client(locality: Locality | None, registered: list[Instance]) -> ServiceClient:
    policies = Policies({"default": {"balancer": "round_robin"}})
    return ServiceClient(StaticRegistry(registered), policies=policies, locality=locality, rng=random.Random(3))


def test_the_client_picks_its_own_zone_and_counts_local_and_remote_picks() -> None:
    c = client(Locality(zone="a"), instances(a=2, b=2))
    assert zones_of([c.pick("svc") for _ in range(100)]) == {"a": 100}
    target = c.target("svc")
    assert (target.local_picks, target.remote_picks) == (100, 0)


def test_the_client_spills_over_when_its_zones_instances_fail_their_health_checks() -> None:
    c = client(Locality(zone="a"), instances(a=2, b=4))
    outliers = c.target("svc").outliers
    outliers.checked("a0", ready=False)
    outliers.checked("a1", ready=False)
    picked = zones_of([c.pick("svc") for _ in range(100)])
    assert picked == {"b": 100}
    assert c.target("svc").remote_picks == 100
    outliers.checked("a0", ready=True)  # one of two back: 1.4 x 1/2 = 70 % stays here
    picked = zones_of([c.pick("svc") for _ in range(1000)])
    assert 620 <= picked["a"] <= 780


def test_a_client_without_locality_balances_over_every_zone_and_counts_nothing() -> None:
    c = client(None, instances(a=2, b=2))
    assert zones_of([c.pick("svc") for _ in range(100)]) == {"a": 50, "b": 50}
    assert (c.target("svc").local_picks, c.target("svc").remote_picks) == (0, 0)


async def test_zone_picks_are_exported_as_a_counter() -> None:
    c = client(Locality(zone="b"), instances(a=1, b=1))
    for _ in range(3):
        c.pick("svc")
    metrics = Metrics("caller")
    metrics.registry.register(ClientMetrics(c))
    text = (await metrics.exposition()).decode()
    assert 'meshop_client_zone_picks_total{locality="local",target="svc"} 3.0' in text
    assert 'meshop_client_zone_picks_total{locality="remote",target="svc"} 0.0' in text
