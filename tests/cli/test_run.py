"""`meshop run SERVICE` becomes the lean worker process (the image's command)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from meshop.cli import app


class Execd(Exception):
    pass


@pytest.fixture
def execs(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    calls: list[list[str]] = []

    def execv(path: str, argv: list[str]) -> None:
        calls.append([path, *argv])
        raise Execd

    monkeypatch.setattr(os, "execv", execv)
    monkeypatch.delenv("MESHOP_IDENTITY_RENEW", raising=False)
    return calls


def test_run_replaces_itself_with_the_worker_of_the_service(execs: list[list[str]]) -> None:
    result = CliRunner().invoke(app, ["run", "catalog"])
    assert isinstance(result.exception, Execd)
    assert execs == [[sys.executable, sys.executable, "-m", "meshop.runtime.worker", "catalog"]]
    assert "MESHOP_IDENTITY_RENEW" not in os.environ


def test_issue_identity_is_handed_to_the_worker_in_its_environment(
    execs: list[list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MESHOP_IDENTITY_RENEW", "")  # restored after the test
    CliRunner().invoke(app, ["run", "orders", "--issue-identity"])
    assert execs[0][-1] == "orders"
    assert os.environ["MESHOP_IDENTITY_RENEW"] == "1"


def test_up_on_a_port_something_listens_on_says_so_and_starts_nothing(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(app, ["up", "--port", str(port), "--data-dir", str(tmp_path / "shop")])
    assert result.exit_code == 2, result.output
    assert f"port {port} is in use" in result.output
    assert not (tmp_path / "shop").exists()
