"""A lab process started again as a kubelet would: its recorded command and settings, no secret values."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import pytest

from meshop.lab.hosts import LabError
from meshop.lab.shop import LabProcess, LabState, alive, check_settings, kill, restart

#: Writes its MESHOP_* settings to its log, then waits to be stopped.
SLEEPER = "import os, time; print(sorted(k for k in os.environ if k.startswith('MESHOP_')), flush=True); time.sleep(60)"


def _wait_lines(log: Path, count: int) -> None:
    deadline = time.monotonic() + 20
    while log.read_text().count("MESHOP_PORT") < count:
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)


def _wait_gone(pid: int) -> None:
    deadline = time.monotonic() + 5
    while alive(pid):
        assert time.monotonic() < deadline, f"pid {pid} still runs"
        time.sleep(0.02)


def test_kill_then_restart_runs_the_same_command_with_the_same_settings(tmp_path: Path) -> None:
    log = tmp_path / "orders-1.log"
    state = LabState(lab_id=250, directory=str(tmp_path), hosts=[])
    state.processes.append(
        LabProcess(
            "orders-1", "service", "h2", "10.77.250.12", 8106, log=str(log),
            argv=[sys.executable, "-c", SLEEPER], env={"MESHOP_PORT": "8106", "MESHOP_ZONE": "b"},
        )
    )  # fmt: skip
    state.save()
    first = second = restart(tmp_path, "orders-1")
    try:
        with pytest.raises(LabError, match="still runs"):
            restart(tmp_path, "orders-1")
        assert LabState.load(tmp_path).process("orders-1").pid == first.pid
        _wait_lines(log, 1)
        kill(tmp_path, "orders-1", signal.SIGKILL)
        _wait_gone(first.pid)
        second = restart(tmp_path, "orders-1")
        assert second.pid != first.pid
        assert LabState.load(tmp_path).process("orders-1").pid == second.pid
        _wait_lines(log, 2)
        assert log.read_text().splitlines() == ["['MESHOP_PORT', 'MESHOP_ZONE']"] * 2
    finally:
        kill(tmp_path, "orders-1", signal.SIGKILL)
    _wait_gone(second.pid)


def test_settings_with_a_secret_value_are_refused() -> None:
    check_settings({"MESHOP_ADMIN_PASSWORD_FILE": "/lab/admin-password", "MESHOP_LOG_LEVEL": "warning"})
    check_settings({"MESHOP_NATS_URL": "nats://10.77.1.11:4222,nats://10.77.1.12:4222"})
    check_settings({"MESHOP_DATABASE_URL": "postgresql://postgres@10.77.1.14:5432"})
    with pytest.raises(ValueError, match="as a file"):
        check_settings({"MESHOP_ADMIN_PASSWORD": "hunter2"})
    with pytest.raises(ValueError, match="as a file"):
        check_settings({"MESHOP_METRICS_TOKEN": "x" * 43})
    with pytest.raises(ValueError, match="password"):
        check_settings({"MESHOP_DATABASE_URL": "postgresql://postgres:hunter2@10.77.1.14:5432"})
    with pytest.raises(ValueError, match="MESHOP_"):
        check_settings({"AWS_SECRET_ACCESS_KEY": "x"})
