"""`meshop chaos` in CI: a real shop under kill -9, NATS restarts, provider faults and DB locks.

A smaller run than the benchmark's (300+ orders, 4 fault cycles), on SQLite and on
PostgreSQL; every invariant must hold with zero violations.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from meshop.chaos.harness import ChaosConfig, ChaosRun
from tests.conftest import PG_SERVER

pytestmark = [pytest.mark.e2e, pytest.mark.system, pytest.mark.timeout(300)]


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
async def test_no_order_is_lost_and_every_invariant_holds_under_faults(database: str, tmp_path: Path) -> None:
    config = ChaosConfig(
        orders=300,
        cycles=4,
        concurrency=8,
        fault_s=2.0,
        calm_s=1.0,
        database_url=PG_SERVER if database == "postgresql" else None,
    )
    lines: list[str] = []
    report = await ChaosRun(config, tmp_path / "shop", say=lines.append).run()
    summary = "\n".join(lines + report.lines())
    assert report.violations == 0, summary
    assert len(report.results) == 10
    assert report.attempted >= 300, summary
    assert report.accepted == report.attempted, summary
    # Both endings happened, and the faults really ran.
    assert report.confirmed > 0, summary
    assert report.cancelled > 0, summary
    assert report.fault_cycles >= 4, summary
    assert report.kills >= 4, summary
    assert set(report.faults) == {
        "restart NATS",
        "hold a database lock",
        "failing payment provider",
        "slow payment provider",
    }
