"""`meshop --version`: what a container image is asked first."""

from __future__ import annotations

from typer.testing import CliRunner

from meshop import __version__
from meshop.cli import app


def test_version_prints_the_package_version_and_exits_zero() -> None:
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output == f"meshop {__version__}\n"
