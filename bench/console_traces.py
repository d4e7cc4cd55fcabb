"""The console's trace store under a shop's span stream: its memory and CPU, with no shop around it.

    python bench/console_traces.py --rate 150 --duration 20
    python bench/console_traces.py --tracemalloc      # also the store's largest allocations, by line
    python bench/console_traces.py --smoke            # its shortest mode: a second of spans

One process feeds a `TraceStore` span batches, msgpack-encoded as every process publishes
them on `SPANS_SUBJECT`, on a fake clock (so `--duration` seconds of spans take only the
CPU they cost) and asks it for decisions every 0.25 s of that clock, as the console does.
The spans are shaped like a shop's under `bench/checkout.py` (captured from `meshop up`
at 90 checkouts/s): per checkout, a trace of 30 spans, 26 within 80 ms and four more
(the outbox's publishes, the users service's consumes) after 0.7–5 s, plus a long poll
and two stock reads of 2 spans each; ~270 bytes a span encoded.

Reported: the process's RSS when the feeding starts and its highest (VmHWM) after, the most
pending traces and spans, and the store's CPU per span. The store is driven through its
public API only, so another tree is measured by running this file with that tree's
interpreter (`/path/to/other/.venv/bin/python bench/console_traces.py`).
"""

from __future__ import annotations

import argparse
import gc
import random
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import msgspec

from _common import add_smoke, table
from meshop.console.sampling import SamplingPolicy
from meshop.console.traces import TraceStore
from meshop.mesh.telemetry.tracing import SpanRecord

#: A checkout's spans as the capture had them: service, name, kind, start ms, duration ms,
#: its attributes (`{id}` is the order id), whether a client span has its `try` event.
_CHECKOUT: list[tuple[str, str, str, float, float, dict[str, str | int], bool]] = [
    (
        "gateway",
        "POST /api/orders",
        "server",
        0.0,
        23.6,
        {"http.route": "/api/orders", "http.response.status_code": 202},
        True,
    ),
    (
        "orders",
        "POST /",
        "server",
        4.8,
        18.7,
        {"http.route": "/", "meshop.operation": "orders.create", "order.id": "{id}"},
        False,
    ),
    *(
        step
        for callee, operation, path, at in [
            ("catalog", "lookup", "/internal/products/lookup", 11.4),
            ("payments", "tokenize", "/internal/payment-methods", 12.1),
            ("inventory", "reserve", "/internal/reservations", 28.8),
            ("payments", "authorize", "/internal/payments", 35.4),
            ("shipping", "create", "/internal/shipments", 50.4),
            ("payments", "capture", "/internal/payments/{id}/capture", 54.2),
            ("inventory", "commit", "/internal/reservations/{id}%3Areserve/commit", 67.3),
        ]
        for step in [
            ("orders", f"{callee}.{operation}", "client", at, 6.0, {"peer.service": callee, "url.path": path}, True),
            (
                "orders",
                f"saga checkout {operation}",
                "internal",
                at,
                6.0,
                {"saga.name": "checkout", "saga.id": "{id}"},
                False,
            ),
            (
                callee,
                f"POST {path}",
                "server",
                at + 0.2,
                0.4,
                {"http.route": path, "meshop.operation": f"{callee}.{operation}"},
                False,
            ),
        ]
    ),
    (
        "inventory",
        "publish StockCommitted",
        "producer",
        75.2,
        0.3,
        {"messaging.destination.name": "meshop.events.inventory.StockCommitted"},
        False,
    ),
]
_LATE = [("orders", "publish OrderPlaced", "producer"), ("orders", "publish OrderConfirmed", "producer")]
_LATER = [("users", "consume OrderPlaced", "consumer"), ("users", "consume OrderConfirmed", "consumer")]
#: When a checkout's last spans (the users service's consumes) ended, in seconds after its
#: first: the capture's 10th, 25th, 50th, 75th and 90th percentiles under load.
_TAIL_S = [0.69, 1.11, 1.57, 3.25, 4.86]
TICK_S = 0.05  # spans are fed in a batch per tick: ~8 processes each publishing every 0.25 s


class _Shop:
    """Spans as a shop makes them, each when it ends."""

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)
        self._due: list[tuple[float, bytes]] = []  # encoded: the feeder's own memory stays small
        self._encode = msgspec.msgpack.Encoder().encode

    def _id(self, bits: int) -> str:
        return f"{self._rng.getrandbits(bits):0{bits // 4}x}"

    def _span(
        self, trace_id: str, parent: str | None, service: str, name: str, kind: str, start_s: float, duration_ms: float
    ) -> SpanRecord:
        start = int(1.8e18 + start_s * 1e9)
        return SpanRecord(
            trace_id, self._id(64), parent, service, f"{service[:2]}-1", name, kind, start,
            start + int(duration_ms * 1e6), False, {"meshop.request_id": self._id(128)}, [],
        )  # fmt: skip

    def checkout(self, at_s: float) -> None:
        trace_id, order = self._id(128), self._id(128)
        root = ""
        for service, name, kind, start_ms, duration_ms, attributes, tried in _CHECKOUT:
            span = self._span(trace_id, root or None, service, name, kind, at_s + start_ms / 1e3, duration_ms)
            span.attributes.update(
                {k: v.replace("{id}", order) if isinstance(v, str) else v for k, v in attributes.items()}
            )
            span.attributes["http.request.method"] = "POST"
            if tried:
                span.events.append(("try", span.start_ns, {"instance": "1e420a-1", "transport": "http", "result": 200}))
            root = root or span.span_id
            self._due.append((at_s + (start_ms + duration_ms) / 1e3, self._encode(span)))
        tail_s = self._rng.choice(_TAIL_S) * self._rng.uniform(0.8, 1.2)
        for names, after_s in ((_LATE, tail_s * 0.6), (_LATER, tail_s)):
            for service, name, kind in names:
                span = self._span(trace_id, root, service, name, kind, at_s + after_s, 0.3)
                span.attributes.update({"messaging.system": "nats", "event.id": self._id(80)})
                self._due.append((at_s + after_s, self._encode(span)))
        for route, callee in (("/api/orders/{id}", "orders"), *[("/api/inventory/stock/{sku}", "inventory")] * 2):
            read_id = self._id(128)
            span = self._span(read_id, None, "gateway", f"GET {route}", "server", at_s, 1.0)
            span.attributes.update(
                {"http.request.method": "GET", "http.route": route, "http.response.status_code": 200}
            )
            inner = self._span(read_id, span.span_id, callee, f"GET {route}", "server", at_s + 0.0002, 0.5)
            self._due += [(at_s + 0.001, self._encode(span)), (at_s + 0.001, self._encode(inner))]

    def ended_by(self, now_s: float) -> list[bytes]:
        ended = [span for t, span in self._due if t <= now_s]
        self._due = [(t, span) for t, span in self._due if t > now_s]
        return ended


def batches(rate: float, duration_s: float, seed: int) -> Iterator[tuple[float, bytes]]:
    """(fake time, one batch as published) for `duration_s` of checkouts at `rate` a second, then their tails."""
    shop, started, now = _Shop(seed), 0, 0.0
    encode = msgspec.msgpack.Encoder().encode
    while now < duration_s + 8:
        now += TICK_S
        while now < duration_s and started < rate * now:
            shop.checkout(started / rate)
            started += 1
        ended = shop.ended_by(now)
        for i in range(0, len(ended), 512):  # a process's batch: at most 512 spans
            yield now, encode([msgspec.Raw(span) for span in ended[i : i + 512]])  # spans as they were encoded


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise LookupError(field)


def run(rate: float, duration_s: float, *, trace_memory: bool) -> None:
    now = [0.0]
    store = TraceStore(SamplingPolicy(), clock=lambda: now[0])
    intake = getattr(store, "receive", None)  # a batch as it arrives; older trees decode it first
    if intake is None:
        decode = msgspec.msgpack.Decoder(list[SpanRecord]).decode

        def intake(payload: bytes) -> None:
            store.add(decode(payload))

    gc.collect()
    rss_start = _rss_kib("VmRSS")
    if trace_memory:
        tracemalloc.start(1)
    cpu_s, spans, next_decision, most, most_after_warmup, snapshot = 0.0, 0, 0.25, (0, 0), 0, None
    for at, payload in batches(rate, duration_s, seed=26):
        now[0] = at
        started = time.process_time()
        intake(payload)
        if at >= next_decision:
            store.decide_due()
            next_decision += 0.25
        cpu_s += time.process_time() - started
        stats = store.stats()
        spans = stats["spans"]
        pending = stats["pending"]
        if pending > most[0]:
            most = (pending, spans)
        if trace_memory and duration_s / 2 <= at < duration_s and pending > most_after_warmup:
            most_after_warmup, snapshot = pending, tracemalloc.take_snapshot()
    stats = store.stats()
    table(
        f"the console's trace store, {rate:.0f} checkouts/s for {duration_s:.0f} s (fake clock)",
        [
            ("RSS at start, MiB", rss_start / 1024),
            ("highest RSS (VmHWM), MiB", _rss_kib("VmHWM") / 1024),
            ("highest RSS less start, MiB", (_rss_kib("VmHWM") - rss_start) / 1024),
            ("most pending traces", most[0]),
            ("spans in", stats["spans"]),
            ("traces decided / kept", f"{stats['decided']} / {stats['kept']}"),
            ("store CPU per span, us", cpu_s / max(spans, 1) * 1e6),
        ],
        ["", "value"],
    )
    if trace_memory:
        peak = tracemalloc.get_traced_memory()[1]
        print(f"\ntraced memory at its highest: {peak / 2**20:.1f} MiB; largest allocations while most traces pended:")
        for stat in (snapshot or tracemalloc.take_snapshot()).statistics("lineno")[:10]:
            print(f"  {stat.size / 2**20:6.2f} MiB  {stat.count:7d} blocks  {stat.traceback[0]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=150.0, help="checkouts a second (default 150)")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of checkouts (fake clock; default 20)")
    parser.add_argument("--tracemalloc", action="store_true", help="also the largest allocations, by line")
    add_smoke(parser)
    args = parser.parse_args()
    if args.smoke:
        args.rate, args.duration = 20.0, 1.0
    run(args.rate, args.duration, trace_memory=args.tracemalloc)


if __name__ == "__main__":
    main()
