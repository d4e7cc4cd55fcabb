"""`meshop up --with module:ATTRIBUTE` refuses what it cannot run before it starts anything."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from meshop.cli import app

IMPOSTOR = """
from meshop.mesh import Api, ServiceDefinition

async def build(runtime):
    return Api("catalog")

DEFINITION = ServiceDefinition(name="catalog", build=build)
NOT_A_DEFINITION = 42
"""


@pytest.fixture
def impostor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    (tmp_path / "impostor_service.py").write_text(IMPOSTOR)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "impostor_service"
    sys.modules.pop("impostor_service", None)


def up(tmp_path: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["up", "--data-dir", str(tmp_path / "data"), "--port", "1", *args])
    return result.exit_code, result.output


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("no_such_module_here:DEFINITION", "cannot load service 'no_such_module_here:DEFINITION'"),
        ("impostor_service:MISSING", "cannot load service 'impostor_service:MISSING'"),
        ("impostor_service:NOT_A_DEFINITION", "is a int, not a meshop.mesh.ServiceDefinition"),
        ("impostor_service:DEFINITION", "a service named 'catalog' runs already"),
        ("orders", "a service named 'orders' runs already"),
    ],
)
def test_a_service_that_cannot_join_is_refused_with_exit_2(tmp_path: Path, impostor: str, spec: str, says: str) -> None:
    code, output = up(tmp_path, "--with", spec)
    assert code == 2, output
    assert says in output
    assert not (tmp_path / "data").exists()  # refused before anything started


def test_replicas_of_a_service_not_run_are_refused(tmp_path: Path) -> None:
    code, output = up(tmp_path, "--replicas", "reviews=2")
    assert code == 2
    assert "SERVICE one of" in output
    assert "reviews" in output
