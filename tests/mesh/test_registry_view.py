"""The registry's local view, with a fake clock."""

from __future__ import annotations

from meshop.mesh.registry import Instance, RegistryView
from meshop.mesh.registry.base import ExpiryGuard
from meshop.mesh.testing import FakeClock


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


def _guarded(count: int) -> tuple[FakeClock, RegistryView, ExpiryGuard]:
    clock = FakeClock()
    view = RegistryView(stale_after_s=3, clock=clock)
    for n in range(count):
        view.put(instance(instance_id=f"i{n}"))
    return clock, view, ExpiryGuard(view, window_s=1.0, clock=clock)


def test_one_expiry_is_a_death() -> None:
    _, view, guard = _guarded(4)
    assert guard.expire("catalog.i0") is False
    assert [i.instance_id for i in view.instances("catalog")] == ["i1", "i2", "i3"]


def test_expiries_of_most_of_the_view_at_once_are_undone() -> None:
    clock, view, guard = _guarded(6)
    clock.now += 2.0  # last seen two seconds before the burst
    assert [guard.expire(f"catalog.i{n}") for n in range(4)] == [False, False, False, True]
    assert len(view) == 6
    # As they were: last seen before the burst, so what nobody refreshes is stale a TTL on.
    clock.now += 1.5
    assert view.instances("catalog") == []
    view.put(instance(instance_id="i5"))
    assert [i.instance_id for i in view.instances("catalog")] == ["i5"]


def test_expiries_spread_wider_than_the_window_are_deaths_one_by_one() -> None:
    clock, view, guard = _guarded(4)
    for n in range(3):
        assert guard.expire(f"catalog.i{n}") is False
        clock.now += 1.5
    assert len(view) == 1


def test_the_last_of_two_instances_expiring_alone_is_a_death() -> None:
    _, view, guard = _guarded(2)
    assert guard.expire("catalog.i0") is False
    assert len(view) == 1


def test_an_expiry_of_a_key_the_view_never_had_changes_nothing() -> None:
    _, view, guard = _guarded(1)
    assert guard.expire("catalog.unknown") is False
    assert guard.expire("catalog.other") is False
    assert len(view) == 1


def test_a_value_seen_before_is_no_new_sign_of_life() -> None:
    """A watch that starts again (after a reconnect) lists every entry: one whose owner
    stopped writing must not look fresh for it."""
    clock = FakeClock()
    view = RegistryView(stale_after_s=3, clock=clock)
    view.put(instance(), revision=7)
    clock.now += 2.0
    view.put(instance(), revision=7)  # the same write, listed again
    assert view.age("catalog.a") == 2.0
    clock.now += 1.5
    assert view.instances("catalog") == []
    view.put(instance(), revision=9)  # a new write
    assert view.age("catalog.a") == 0.0
    assert len(view.instances("catalog")) == 1
