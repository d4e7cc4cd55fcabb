"""`meshop chaos --lab` refuses what it cannot do, before it starts anything."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from meshop.cli import app


def test_the_lab_needs_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("meshop.lab.hosts.can_create", lambda: False)
    result = CliRunner().invoke(app, ["chaos", "--lab"])
    assert result.exit_code == 2
    assert "run it as root" in result.output


def test_the_lab_brings_its_own_postgresql() -> None:
    result = CliRunner().invoke(app, ["chaos", "--lab", "--postgres", "postgresql://postgres@127.0.0.1:5432"])
    assert result.exit_code == 2
    assert "leave out --postgres" in result.output
