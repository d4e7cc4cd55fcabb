"""The registry's local view, with a fake clock."""

from __future__ import annotations

from meshop.mesh.registry import Instance, RegistryView


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def instance(service: str = "catalog", instance_id: str = "a", heartbeat_at: float = 1000.0) -> Instance:
    return Instance(
        service=service, instance_id=instance_id, address="127.0.0.1", port=1, pid=1, heartbeat_at=heartbeat_at
    )


def test_put_then_instances_lists_it() -> None:
    view = RegistryView(stale_after_s=3, clock=FakeClock())
    view.put(instance())
    assert [i.instance_id for i in view.instances("catalog")] == ["a"]
    assert view.instances("orders") == []


def test_remove_by_key_forgets_the_instance() -> None:
    view = RegistryView(stale_after_s=3, clock=FakeClock())
    view.put(instance())
    view.remove("catalog.a")
    assert view.instances("catalog") == []


def test_an_instance_whose_heartbeat_is_stale_is_not_returned() -> None:
    clock = FakeClock()
    view = RegistryView(stale_after_s=3, clock=clock)
    view.put(instance(heartbeat_at=clock.now))
    clock.now += 2.9
    assert len(view.instances("catalog")) == 1
    clock.now += 0.2
    assert view.instances("catalog") == []


def test_suspended_expiry_keeps_the_last_known_view() -> None:
    clock = FakeClock()
    view = RegistryView(stale_after_s=3, clock=clock)
    view.put(instance(heartbeat_at=clock.now))
    view.expiry_suspended = True
    clock.now += 60
    assert len(view.instances("catalog")) == 1


def test_a_newer_registration_replaces_the_older() -> None:
    clock = FakeClock()
    view = RegistryView(stale_after_s=3, clock=clock)
    view.put(instance(heartbeat_at=clock.now))
    clock.now += 10
    view.put(instance(heartbeat_at=clock.now))
    assert len(view.instances("catalog")) == 1
    assert view.services() == ["catalog"]


def test_instance_url_brackets_ipv6() -> None:
    assert instance().url == "http://127.0.0.1:1"
    v6 = Instance(service="s", instance_id="b", address="::1", port=80, pid=1)
    assert v6.url == "http://[::1]:80"
