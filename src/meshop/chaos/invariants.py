"""The ten invariants a chaos run checks, over what the shop's admin APIs say at rest.

Each check is a pure function of a `Snapshot` (the shop's state after healing and
quiescence) and a `Record` (what the workload itself saw), so each can be shown to catch
its violation with a hand-made snapshot. Totals are in cents; quantities in units.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Row = dict[str, Any]

_RELEASED = {"RELEASED", "REJECTED"}
_SETTLED_PAYMENT = {"VOIDED", "REFUNDED", "DECLINED", "FAILED"}


@dataclass
class Snapshot:
    """The shop at rest, as its admin APIs report it."""

    orders: list[Row]
    stock: list[Row]
    reservations: list[Row]
    payments: list[Row]
    shipments: list[Row]
    #: service → unsent outbox rows.
    outbox_pending: dict[str, int]
    #: `GET /admin/consumers` of every service that consumes.
    consumers: list[Row]
    #: Dead letters in the DLQ stream, per consumer.
    dead_letters: dict[str, int]
    #: The users service's order-statistics read model (fed by order events).
    order_stats: list[Row]


@dataclass
class Record:
    """What the workload and the harness saw."""

    #: SKU → available + reserved + committed before the run, and committed alone.
    initial_total: dict[str, int]
    initial_committed: dict[str, int]
    #: Orders the shop accepted (202/200 with an id), by id → the Idempotency-Key used.
    accepted: dict[str, str] = field(default_factory=dict)
    #: Every Idempotency-Key sent → the order ids answered for it (all attempts, duplicates).
    answers: dict[str, set[str]] = field(default_factory=dict)
    #: Accepted orders still PENDING when the 60 s after healing ran out.
    pending_at_bound: list[str] = field(default_factory=list)


@dataclass
class Result:
    name: str
    description: str
    checked: int
    violations: list[str]

    @property
    def ok(self) -> bool:
        return not self.violations


def check_all(snapshot: Snapshot, record: Record) -> list[Result]:
    return [check(snapshot, record) for check in CHECKS]


def _net_capture(snapshot: Snapshot) -> dict[str, int]:
    net: Counter[str] = Counter()
    for p in snapshot.payments:
        net[p["order_id"]] += p["captured_cents"] - p["refunded_cents"]
    return net


def _confirmed(snapshot: Snapshot) -> list[Row]:
    return [o for o in snapshot.orders if o["status"] == "CONFIRMED"]


def i1_stock_conserved(snapshot: Snapshot, record: Record) -> Result:
    violations = []
    sold: Counter[str] = Counter()
    for order in _confirmed(snapshot):
        for line in order["items"]:
            sold[line["sku"]] += line["quantity"]
    for row in snapshot.stock:
        sku = row["sku"]
        total = row["available"] + row["reserved"] + row["committed"]
        if total != record.initial_total.get(sku, total):
            violations.append(f"{sku}: total {total} != {record.initial_total[sku]} before the run")
        if min(row["available"], row["reserved"], row["committed"]) < 0:
            violations.append(f"{sku}: a negative level {row}")
        if row["reserved"] != 0:
            violations.append(f"{sku}: {row['reserved']} still reserved at rest")
        committed = row["committed"] - record.initial_committed.get(sku, 0)
        if committed != sold[sku]:
            violations.append(f"{sku}: committed {committed} != {sold[sku]} sold in CONFIRMED orders")
    return Result("I1", "stock conserved; reserved 0 at rest; committed = sold", len(snapshot.stock), violations)


def i2_no_double_capture(snapshot: Snapshot, record: Record) -> Result:
    violations = []
    captures = Counter(p["order_id"] for p in snapshot.payments if p["captured_cents"] > 0)
    violations += [f"order {o} captured {n} times" for o, n in captures.items() if n > 1]
    net = sum(_net_capture(snapshot).values())
    expected = sum(o["total_cents"] for o in _confirmed(snapshot))
    if net != expected:
        violations.append(f"net captured {net} != {expected}, the total of CONFIRMED orders")
    return Result("I2", "no double capture; net captured = CONFIRMED totals", len(snapshot.payments), violations)


def i3_paid_iff_confirmed(snapshot: Snapshot, record: Record) -> Result:
    net = _net_capture(snapshot)
    violations = []
    for order in snapshot.orders:
        paid = net.get(order["id"], 0)
        if (paid > 0) != (order["status"] == "CONFIRMED"):
            violations.append(f"order {order['id']} is {order['status']} with net capture {paid}")
        elif order["status"] == "CONFIRMED" and paid != order["total_cents"]:
            violations.append(f"order {order['id']} captured {paid} of {order['total_cents']}")
    return Result("I3", "net capture > 0 iff CONFIRMED", len(snapshot.orders), violations)


def i4_terminal_after_heal(snapshot: Snapshot, record: Record) -> Result:
    late = set(record.pending_at_bound) | {o["id"] for o in snapshot.orders if o["status"] == "PENDING"}
    return Result(
        "I4", "every accepted order terminal within 60 s of heal", len(snapshot.orders), [f"{o} PENDING" for o in late]
    )


def i5_nothing_lost(snapshot: Snapshot, record: Record) -> Result:
    ids = {o["id"] for o in snapshot.orders}
    missing = [f"accepted order {o} is gone" for o in record.accepted if o not in ids]
    return Result("I5", "no accepted order lost", len(record.accepted), missing)


def i6_no_phantoms(snapshot: Snapshot, record: Record) -> Result:
    ids = {o["id"] for o in snapshot.orders}
    violations = [
        f"{kind} for unknown order {row['order_id']}"
        for kind, rows in (
            ("payment", snapshot.payments),
            ("shipment", snapshot.shipments),
            ("reservation", snapshot.reservations),
        )
        for row in rows
        if row["order_id"] not in ids
    ]
    checked = len(snapshot.payments) + len(snapshot.shipments) + len(snapshot.reservations)
    return Result("I6", "every payment, shipment and reservation has an order", checked, violations)


def _by_order(rows: list[Row]) -> dict[str, list[Row]]:
    grouped: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        grouped[row["order_id"]].append(row)
    return grouped


def i7_cancelled_is_undone(snapshot: Snapshot, record: Record) -> Result:
    reservations, payments, shipments = (
        _by_order(snapshot.reservations),
        _by_order(snapshot.payments),
        _by_order(snapshot.shipments),
    )
    violations = []
    cancelled = [o for o in snapshot.orders if o["status"] == "CANCELLED"]
    for order in cancelled:
        oid = order["id"]
        violations += [
            f"order {oid}: reservation {r['status']}" for r in reservations[oid] if r["status"] not in _RELEASED
        ]
        violations += [
            f"order {oid}: payment {p['status']}" for p in payments[oid] if p["status"] not in _SETTLED_PAYMENT
        ]
        violations += [f"order {oid}: shipment {s['status']}" for s in shipments[oid] if s["status"] == "CREATED"]
    return Result("I7", "CANCELLED: stock released, payment voided, no shipment", len(cancelled), violations)


def i8_shipped_iff_confirmed(snapshot: Snapshot, record: Record) -> Result:
    live = {s["order_id"] for s in snapshot.shipments if s["status"] == "CREATED"}
    violations = [
        f"order {o['id']} is {o['status']} {'with' if o['id'] in live else 'without'} a live shipment"
        for o in snapshot.orders
        if (o["id"] in live) != (o["status"] == "CONFIRMED")
    ]
    return Result("I8", "a live shipment iff CONFIRMED", len(snapshot.orders), violations)


def i9_events_delivered_once(snapshot: Snapshot, record: Record) -> Result:
    violations = [f"{service}: {n} unsent outbox rows" for service, n in snapshot.outbox_pending.items() if n]
    for consumer in snapshot.consumers:
        if consumer["pending"] or consumer["unacknowledged"]:
            violations.append(
                f"{consumer['name']}: {consumer['pending']} pending, {consumer['unacknowledged']} unacknowledged"
            )
    violations += [f"{name}: {n} dead letters" for name, n in snapshot.dead_letters.items() if n]
    # The users service counts order events per customer: each applied once ⇔ equal counts.
    expected: dict[str, Counter[str]] = defaultdict(Counter)
    for order in snapshot.orders:
        counts = expected[order["user_id"]]
        counts["placed"] += 1
        if order["status"] == "CONFIRMED":
            counts["confirmed"] += 1
            counts["spent_cents"] += order["total_cents"]
        elif order["status"] == "CANCELLED":
            counts["cancelled"] += 1
    seen = {row["user_id"]: row for row in snapshot.order_stats}
    for user_id in expected.keys() | seen.keys():
        row = seen.get(user_id, {})
        for name in ("placed", "confirmed", "cancelled", "spent_cents"):
            if row.get(name, 0) != expected[user_id][name]:
                violations.append(f"user {user_id}: order-stats {name} {row.get(name, 0)} != {expected[user_id][name]}")
    checked = len(snapshot.outbox_pending) + len(snapshot.consumers) + len(expected)
    return Result("I9", "outboxes drained; each consumer applied each event once", checked, violations)


def i10_one_order_per_key(snapshot: Snapshot, record: Record) -> Result:
    violations = [f"key {k} answered {len(ids)} orders" for k, ids in record.answers.items() if len(ids) > 1]
    if len(snapshot.orders) > len(record.answers):
        violations.append(f"{len(snapshot.orders)} orders exist for {len(record.answers)} keys sent")
    return Result("I10", "same Idempotency-Key, one order", len(record.answers), violations)


CHECKS: list[Callable[[Snapshot, Record], Result]] = [
    i1_stock_conserved,
    i2_no_double_capture,
    i3_paid_iff_confirmed,
    i4_terminal_after_heal,
    i5_nothing_lost,
    i6_no_phantoms,
    i7_cancelled_is_undone,
    i8_shipped_iff_confirmed,
    i9_events_delivered_once,
    i10_one_order_per_key,
]
