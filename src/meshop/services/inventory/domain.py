"""Reservation rules: all lines or none, one effect per idempotency key."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

from meshop.contracts.inventory import Line, Reservation, ReservedLine, ReserveRequest
from meshop.mesh import Conflict, Conn, NotFound
from meshop.services.inventory import events, store


def _now() -> str:
    return datetime.now(UTC).isoformat()


def merge_lines(items: list[Line]) -> list[ReservedLine]:
    """One line per SKU, quantities summed, in SKU order (a stable lock order)."""
    totals: Counter[str] = Counter()
    for line in items:
        totals[line.sku] += line.quantity
    return [ReservedLine(sku=sku, quantity=qty) for sku, qty in sorted(totals.items())]


async def reserve(conn: Conn, key: str, request: ReserveRequest) -> Reservation:
    """Reserve every line or none; the same key returns the first outcome again."""
    existing = await store.reservation(conn, key)
    if existing is not None:
        return existing
    lines = merge_lines(request.items)
    levels = await store.stock_of(conn, [line.sku for line in lines], for_update=True)
    short = [line.sku for line in lines if line.sku not in levels or levels[line.sku].available < line.quantity]
    if short:
        result = Reservation(
            id=key,
            order_id=request.order_id,
            status="REJECTED",
            items=lines,
            reason=f"insufficient stock: {', '.join(short)}",
        )
    else:
        for line in lines:
            await store.adjust(conn, line.sku, available=-line.quantity, reserved=line.quantity)
        result = Reservation(id=key, order_id=request.order_id, status="RESERVED", items=lines)
        await events.stock_reserved(conn, result)
    await store.save(conn, result, _now(), new=True)
    return result


async def release(conn: Conn, reservation_id: str) -> Reservation:
    """Give reserved stock back; releasing twice (or a rejected reservation) changes nothing."""
    found = await _find(conn, reservation_id)
    if found.status in ("RELEASED", "REJECTED"):
        return found
    if found.status == "COMMITTED":
        raise Conflict("a committed reservation cannot be released")
    for line in found.items:
        await store.adjust(conn, line.sku, available=line.quantity, reserved=-line.quantity)
    released = Reservation(id=found.id, order_id=found.order_id, status="RELEASED", items=found.items)
    await store.save(conn, released, _now(), new=False)
    await events.stock_released(conn, released)
    return released


async def release_by_key(conn: Conn, key: str, order_id: str) -> Reservation:
    """Release what `reserve` did with `key`; if it has not run yet, leave a tombstone so it never will.

    A caller that timed out on `reserve` cannot know whether it reserved: this is how it
    undoes the step without assuming either outcome.
    """
    found = await store.reservation(conn, key, for_update=True)
    if found is not None:
        return await release(conn, key)
    tombstone = Reservation(
        id=key, order_id=order_id, status="RELEASED", items=[], reason="released before it was made"
    )
    await store.save(conn, tombstone, _now(), new=True)
    return tombstone


async def commit(conn: Conn, reservation_id: str) -> Reservation:
    """Make reserved stock final; committing twice changes nothing."""
    found = await _find(conn, reservation_id)
    if found.status == "COMMITTED":
        return found
    if found.status != "RESERVED":
        raise Conflict(f"a {found.status.lower()} reservation cannot be committed")
    for line in found.items:
        await store.adjust(conn, line.sku, reserved=-line.quantity, committed=line.quantity)
    committed = Reservation(id=found.id, order_id=found.order_id, status="COMMITTED", items=found.items)
    await store.save(conn, committed, _now(), new=False)
    await events.stock_committed(conn, committed)
    return committed


async def _find(conn: Conn, reservation_id: str) -> Reservation:
    """The reservation, locked for this transaction: its status decides what the stock does."""
    found = await store.reservation(conn, reservation_id, for_update=True)
    if found is None:
        raise NotFound("no such reservation")
    return found
