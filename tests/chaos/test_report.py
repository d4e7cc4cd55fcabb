"""The chaos report's per-fault lines: what the customers retried and lost during each cycle."""

from __future__ import annotations

from meshop.chaos.harness import ChaosConfig, ChaosReport
from meshop.chaos.lab_nemesis import counters
from meshop.chaos.workload import WorkloadStats


def test_each_fault_cycle_gets_a_line_with_its_retries_and_failures() -> None:
    report = ChaosReport(config=ChaosConfig(lab_hosts=4), seed=1)
    report.windows = [
        {"cycle": 1, "fault": "cut a host", "seconds": 7.7, "retried": 45, "failed": 0,
         "retried_by": {"503": 40, "timeout": 5}, "what": "h3 cut for 4.0 s"},
        {"cycle": 2, "fault": "rolling restart", "seconds": 67.8, "retried": 0, "failed": 2, "retried_by": {},
         "under_load": False},
    ]  # fmt: skip
    lines = report.lines()
    assert "   1 cut a host                   7.7s    45 / 0   (40 503, 5 timeout)  h3 cut for 4.0 s" in lines
    assert "-  2 rolling restart             67.8s     0 / 2" in lines
    assert report.as_dict()["database"] == "postgresql"
    assert report.as_dict()["windows"] == report.windows


def test_failed_for_good_counts_refusals_and_give_ups() -> None:
    stats = WorkloadStats(client_retries=7, gave_up=1)
    stats.refused[409] += 2
    assert counters(stats) == (7, 3)
    assert counters(None) == (0, 0)
