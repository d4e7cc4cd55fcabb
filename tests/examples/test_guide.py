"""docs/guide.md cannot rot: every quote is still in the file it names, and every command
marked `<!-- run -->` runs and succeeds."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "guide.md"
BIN = Path(sys.executable).parent

_QUOTE = re.compile(r"<!-- from: (?P<path>\S+) -->\n```python\n(?P<code>.*?)```", re.DOTALL)
_RUN = re.compile(r"<!-- run -->\n```console\n(?P<lines>.*?)```", re.DOTALL)


def _quotes() -> list[tuple[str, str]]:
    return [(m["path"], m["code"]) for m in _QUOTE.finditer(GUIDE.read_text())]


def _commands() -> list[str]:
    found = []
    for block in _RUN.finditer(GUIDE.read_text()):
        found += [line.removeprefix("$ ") for line in block["lines"].splitlines() if line.startswith("$ ")]
    return found


def test_the_guide_quotes_code_and_runs_commands() -> None:
    """Guards the two lists below: a guide whose markers no longer parse would check nothing."""
    assert len(_quotes()) >= 10
    assert len(_commands()) >= 3


@pytest.mark.parametrize(("path", "code"), _quotes(), ids=lambda v: v if "/" in v else None)
def test_a_quote_is_still_in_its_file(path: str, code: str) -> None:
    assert code in (ROOT / path).read_text(), f"docs/guide.md quotes code no longer in {path}:\n{code}"


# In `make test-system`: the guide's pytest command runs the example's tests again, which
# `make test` runs once already (~1 minute on two cores).
@pytest.mark.system
@pytest.mark.timeout(180)
@pytest.mark.parametrize("command", _commands())
def test_a_command_of_the_guide_succeeds(command: str) -> None:
    argv = shlex.split(command)
    if argv[0] == "meshop":
        argv[0] = str(BIN / "meshop")
    elif argv[0] == "pytest":  # without the parent run's own plugins' state
        argv[:1] = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "examples")}
    env.pop("PYTEST_CURRENT_TEST", None)
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=150)
    assert done.returncode == 0, f"{command} failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
