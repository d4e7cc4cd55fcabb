"""A build older than the sources is refused, by the tests and by `meshop up` and `run`."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from meshop.cli.main import app
from meshop.runtime import build


def package(root: Path, *, source_at: float, built_at: float) -> Path:
    """A package with two sources and a module compiled beside one of them, at those times."""
    pkg = root / "pkg"
    (pkg / "sub").mkdir(parents=True)
    for path, at in [
        (pkg / "__init__.py", source_at - 10),
        (pkg / "sub" / "mod.py", source_at),
        (pkg / "sub" / "mod.cpython-311-x86_64-linux-gnu.so", built_at),
    ]:
        path.write_text("")
        os.utime(path, (at, at))
    return pkg


def test_a_module_compiled_before_any_source_changed_is_stale(tmp_path: Path) -> None:
    assert build.stale_compiled(package(tmp_path, source_at=2000, built_at=1000)) == [
        "pkg/sub/mod.cpython-311-x86_64-linux-gnu.so"
    ]


def test_a_module_compiled_after_every_source_is_current(tmp_path: Path) -> None:
    assert build.stale_compiled(package(tmp_path, source_at=1000, built_at=2000)) == []


@pytest.mark.parametrize("command", [["up"], ["run", "catalog"]])
def test_meshop_refuses_to_run_a_stale_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    monkeypatch.setattr(build, "PACKAGE", package(tmp_path, source_at=2000, built_at=1000))
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 2
    assert "compiled modules are older than the sources (pkg/sub/mod" in result.output
    assert "make compile" in result.output
