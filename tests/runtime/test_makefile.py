"""`make up` says what it is doing before the long, silent mypyc build."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
def test_compiling_is_announced_once_with_its_duration_before_it_starts() -> None:
    planned = subprocess.run(
        ["make", "--dry-run", "--always-make", "compile"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    said = [i for i, line in enumerate(planned) if "compiling the request path with mypyc" in line]
    [compiling] = [i for i, line in enumerate(planned) if "/mypyc " in line]
    assert len(said) == 1
    assert said[0] < compiling
    assert "a minute or two" in planned[said[0]]
