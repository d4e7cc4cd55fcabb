"""Helpers shared by the benchmarks: percentiles, a table printer and the `--smoke` option."""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Sequence


def pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def row(name: str, samples_s: Sequence[float]) -> tuple[str, float, float, float]:
    """(name, p50 ms, p99 ms, mean ms)."""
    return name, pct(samples_s, 0.5) * 1000, pct(samples_s, 0.99) * 1000, statistics.fmean(samples_s) * 1000


def table(title: str, rows: Sequence[tuple[object, ...]], headers: Sequence[str]) -> None:
    print(f"\n{title}")
    widths = [max(len(str(h)), *(len(_fmt(r[i])) for r in rows)) for i, h in enumerate(headers)]
    print("  ".join(str(h).ljust(w) for h, w in zip(headers, widths, strict=True)))
    for r in rows:
        print("  ".join(_fmt(v).ljust(w) for v, w in zip(r, widths, strict=True)))


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if value < 0.1 else f"{value:.3f}" if value < 10 else f"{value:.1f}"
    return str(value)


def add_smoke(parser: argparse.ArgumentParser) -> None:
    """`--smoke`: the benchmark's shortest mode, which tests/bench/test_smoke.py runs.

    Every part runs for real, once and briefly, and the same tables are printed: seconds
    in all, so that a benchmark the README names cannot stop working unnoticed. Its
    figures are too noisy to quote.
    """
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="the shortest mode (seconds): every part once, briefly, the same tables; figures not to be quoted",
    )
