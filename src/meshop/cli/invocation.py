"""How a user types the running `meshop` command again, from where they are."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

__all__ = ["command_name"]


def command_name(argv0: str, *, executable: str, cwd: Path, which: Callable[[str], str | None] = shutil.which) -> str:
    """`meshop` when that name on PATH runs this command, else its path (relative when under `cwd`).

    `make up` runs `.venv/bin/meshop` without activating the environment, so a plain
    `meshop` in another terminal is "command not found" there; `python -m meshop` is
    named by the `meshop` script beside its interpreter when it has one.
    """
    script = _absolute(argv0, cwd)
    if script.name == "__main__.py":
        beside = Path(executable).parent / "meshop"
        if not os.access(beside, os.X_OK):
            return f"{_shown(_absolute(executable, cwd), cwd)} -m meshop"
        script = _absolute(str(beside), cwd)
    found = which("meshop")
    if found is not None and Path(found).resolve() == script.resolve():
        return "meshop"
    return _shown(script, cwd)


def _absolute(path: str, cwd: Path) -> Path:
    """`path` from `cwd`, with `..` folded but symlinks kept (a venv's python is one)."""
    return Path(os.path.normpath(cwd / path))


def _shown(path: Path, cwd: Path) -> str:
    if path.is_relative_to(cwd):
        relative = str(path.relative_to(cwd))
        return relative if os.sep in relative else f".{os.sep}{relative}"  # a bare name would be looked up on PATH
    return str(path)
