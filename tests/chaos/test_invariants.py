"""Each chaos invariant passes on a consistent shop and catches its own violation."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest

from meshop.chaos.invariants import Record, Snapshot, check_all


def consistent() -> tuple[Snapshot, Record]:
    """Two customers: order c1 confirmed, order x1 cancelled (declined card), 10 units each SKU."""
    confirmed = {"id": "c1", "user_id": "u1", "status": "CONFIRMED", "total_cents": 500, "cancel_reason": None}
    cancelled = {"id": "x1", "user_id": "u2", "status": "CANCELLED", "total_cents": 300, "cancel_reason": "DECLINED"}
    confirmed["items"] = [{"sku": "A", "quantity": 2}]
    cancelled["items"] = [{"sku": "B", "quantity": 1}]
    snapshot = Snapshot(
        orders=[confirmed, cancelled],
        stock=[
            {"sku": "A", "available": 8, "reserved": 0, "committed": 2},
            {"sku": "B", "available": 10, "reserved": 0, "committed": 0},
        ],
        reservations=[
            {"order_id": "c1", "status": "COMMITTED", "items": confirmed["items"]},
            {"order_id": "x1", "status": "RELEASED", "items": cancelled["items"]},
        ],
        payments=[
            {"order_id": "c1", "status": "CAPTURED", "captured_cents": 500, "refunded_cents": 0},
            {"order_id": "x1", "status": "DECLINED", "captured_cents": 0, "refunded_cents": 0},
        ],
        shipments=[{"order_id": "c1", "status": "CREATED", "tracking_number": "T1"}],
        outbox_pending={"orders": 0, "inventory": 0},
        consumers=[{"name": "users.order-stats", "pending": 0, "unacknowledged": 0}],
        dead_letters={},
        order_stats=[
            {"user_id": "u1", "placed": 1, "confirmed": 1, "cancelled": 0, "spent_cents": 500},
            {"user_id": "u2", "placed": 1, "confirmed": 0, "cancelled": 1, "spent_cents": 0},
        ],
    )
    record = Record(
        initial_total={"A": 10, "B": 10},
        initial_committed={"A": 0, "B": 0},
        accepted={"c1": "k1", "x1": "k2"},
        answers={"k1": {"c1"}, "k2": {"x1"}},
    )
    return snapshot, record


def test_a_consistent_shop_has_no_violations() -> None:
    results = check_all(*consistent())
    assert [r.name for r in results] == [f"I{n}" for n in range(1, 11)]
    assert all(r.ok for r in results), [r.violations for r in results if not r.ok]


def _stock_leaked(s: Snapshot, r: Record) -> None:
    s.stock[0]["available"] -= 1


def _still_reserved(s: Snapshot, r: Record) -> None:
    s.stock[1]["available"] -= 1
    s.stock[1]["reserved"] += 1


def _double_capture(s: Snapshot, r: Record) -> None:
    s.payments.append({"order_id": "c1", "status": "CAPTURED", "captured_cents": 500, "refunded_cents": 0})


def _cancelled_but_charged(s: Snapshot, r: Record) -> None:
    s.payments[1].update(status="CAPTURED", captured_cents=300)


def _stuck(s: Snapshot, r: Record) -> None:
    r.pending_at_bound.append("x1")


def _lost(s: Snapshot, r: Record) -> None:
    r.accepted["gone"] = "k3"


def _phantom(s: Snapshot, r: Record) -> None:
    s.shipments.append({"order_id": "nobody", "status": "CANCELLED", "tracking_number": "T9"})


def _not_released(s: Snapshot, r: Record) -> None:
    s.reservations[1]["status"] = "RESERVED"


def _confirmed_without_shipment(s: Snapshot, r: Record) -> None:
    s.shipments[0]["status"] = "CANCELLED"


def _event_applied_twice(s: Snapshot, r: Record) -> None:
    s.order_stats[0]["confirmed"] = 2


def _unsent_event(s: Snapshot, r: Record) -> None:
    s.outbox_pending["orders"] = 1


def _two_orders_one_key(s: Snapshot, r: Record) -> None:
    r.answers["k1"].add("c2")


@pytest.mark.parametrize(
    ("breaks", "mutate"),
    [
        ({"I1"}, _stock_leaked),
        ({"I1"}, _still_reserved),
        ({"I2", "I3"}, _double_capture),
        ({"I2", "I3", "I7"}, _cancelled_but_charged),
        ({"I4"}, _stuck),
        ({"I5"}, _lost),
        ({"I6"}, _phantom),
        ({"I7"}, _not_released),
        ({"I8"}, _confirmed_without_shipment),
        ({"I9"}, _event_applied_twice),
        ({"I9"}, _unsent_event),
        ({"I10"}, _two_orders_one_key),
    ],
)
def test_each_violation_is_caught_by_its_invariant(
    breaks: set[str], mutate: Callable[[Snapshot, Record], None]
) -> None:
    snapshot, record = copy.deepcopy(consistent())
    mutate(snapshot, record)
    failing = {r.name for r in check_all(snapshot, record) if not r.ok}
    assert failing == breaks
