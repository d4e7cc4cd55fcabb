"""bench/outbox_latency.py runs in its shortest mode and reports what it measures."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.bench, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]


def test_the_outbox_latency_benchmark_runs_with_smoke_and_prints_p50_and_p99() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "outbox_latency.py"), "--smoke"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    header = next(line for line in done.stdout.splitlines() if line.startswith("events"))
    assert "p50" in header
    assert "p99" in header
    # Events from every service that emits, each measured.
    for row in ("catalog ProductUpdated", "orders OrderPlaced", "inventory StockReserved", "payments", "shipping"):
        assert f"\n{row}" in done.stdout, done.stdout
    assert "target p99 <= 10 ms" in done.stdout
