"""A runnable tree of another commit, built once: what `bench/checkout.py --baseline` runs.

    python bench/baseline_tree.py COMMIT DIR [--own-venv]

Puts COMMIT's files in DIR (`git archive`: a plain copy, no worktree registered in the
repository), gives it an interpreter and compiles its request path with its own Makefile
(`make compile`: `meshop up` refuses a stale build, and the compiled build is the one it
measures). The interpreter is this venv's, with only `PYTHONPATH=DIR/src`, when COMMIT's
pyproject.toml asks for the same dependencies as this tree's (the usual case: a minute of
mypyc instead of a venv to install); otherwise, or with `--own-venv`, DIR gets its own
`.venv` (`make compile` installs it, `pip install -e '.[dev]'`). Cached: DIR already
holding COMMIT built is used as it is. Prints the commit.

A tree is described by `DIR/.baseline-tree.json` (commit, interpreter, PYTHONPATH), which
`Tree.of()` reads; a path without one (another checkout, this tree itself) runs with its
own `.venv` if it has one, else this interpreter, and `PYTHONPATH=<path>/src`.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARKER = ".baseline-tree.json"
#: Present while a tree is being made: such a directory may be replaced (no other is).
PARTIAL = ".baseline-tree.partial"


@dataclass(frozen=True)
class Tree:
    """A tree to run `python -m meshop up` from: its code, interpreter and what it is."""

    path: Path
    commit: str
    python: str
    #: "reused": this venv, PYTHONPATH at the tree's src; "own": the tree's .venv.
    venv: str

    @property
    def env(self) -> dict[str, str]:
        """What a process of this tree needs in its environment (its code before any installed copy)."""
        return {"PYTHONPATH": str(self.path / "src")}

    @classmethod
    def of(cls, path: Path) -> Tree:
        """The tree at `path`: as baseline_tree built it, or a checkout as it stands."""
        path = path.resolve()
        if (path / MARKER).is_file():
            known = json.loads((path / MARKER).read_text())
            return cls(path=path, commit=known["commit"], python=known["python"], venv=known["venv"])
        if not (path / "src" / "meshop").is_dir():
            raise SystemExit(f"{path} holds no meshop tree (no src/meshop)")
        own = path / ".venv" / "bin" / "python"
        python, venv = (str(own), "own") if own.exists() else (sys.executable, "reused")
        return cls(path=path, commit=describe(path), python=python, venv=venv)


def git(*args: str, cwd: Path = ROOT) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def resolve(commitish: str) -> str:
    """The full hash of `commitish` in this repository (a SystemExit naming it if there is none)."""
    try:
        return git("rev-parse", "--verify", "--quiet", f"{commitish}^{{commit}}")
    except subprocess.CalledProcessError:
        raise SystemExit(f"{commitish!r} names no commit in {ROOT}") from None


def describe(path: Path) -> str:
    """A checkout's commit, with `+changes` when its tracked files differ from it."""
    try:
        head = git("rev-parse", "HEAD", cwd=path)
        changed = git("status", "--porcelain", "--untracked-files=no", cwd=path)
    except (subprocess.CalledProcessError, FileNotFoundError):
        return "unknown (not a git checkout)"
    return head + ("+changes" if changed else "")


def same_dependencies(tree: Path, reference: Path = ROOT) -> bool:
    """Whether the two trees' pyproject.toml ask for the same packages (runtime and dev) and Python."""

    def wanted(root: Path) -> object:
        project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
        return project.get("requires-python"), project.get("dependencies"), project.get("optional-dependencies")

    return wanted(tree) == wanted(reference)


def cache_dir(commit: str) -> Path:
    """Where `bench/checkout.py --baseline COMMIT` keeps COMMIT's tree: under the system temp dir."""
    return Path(tempfile.gettempdir()) / f"meshop-baseline-{commit[:12]}"


def build(commitish: str, path: Path, *, own_venv: bool = False) -> Tree:
    """COMMITISH's tree at `path`, made and compiled unless it is there already."""
    commit = resolve(commitish)
    path = path.resolve()
    if (path / MARKER).is_file():
        tree = Tree.of(path)
        built = (path / "src" / "build" / ".compiled").exists() and Path(tree.python).exists()
        if built and tree.commit == commit and (tree.venv == "own" or not own_venv):
            print(f"baseline tree: {commit} ({commitish}) in {path}, built already ({tree.venv} venv)", flush=True)
            return tree
    if path.exists():
        if any(path.iterdir()) and not (path / MARKER).is_file() and not (path / PARTIAL).is_file():
            raise SystemExit(f"{path} exists and is not a baseline tree: refusing to replace what it holds")
        shutil.rmtree(path)
    path.mkdir(parents=True)
    (path / PARTIAL).touch()
    print(f"baseline tree: {commit} ({commitish}) into {path}", flush=True)
    archive = subprocess.run(["git", "archive", "--format=tar", commit], cwd=ROOT, check=True, capture_output=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(path, filter="data")
    reuse = not own_venv and same_dependencies(path)
    if reuse:
        python, venv = sys.executable, "reused"
        # The Makefile's venv is this one, and its install stamp a file of the tree's that is
        # newer than its pyproject.toml: `make` must not reinstall this venv from the tree.
        stamp = path / ".bench-venv-stamp"
        stamp.touch()
        # (the Makefile runs `../$(BIN)/mypyc` from src/: BIN relative to the tree)
        variables = [f"BIN={os.path.relpath(Path(sys.executable).parent, path)}", f"STAMP={stamp}"]
    else:
        python, venv = str(path / ".venv" / "bin" / "python"), "own"
        variables = [f"PYTHON={sys.base_prefix}/bin/python3"]
    why = "same dependencies as this tree" if reuse else "--own-venv" if own_venv else "its dependencies differ"
    print(f"baseline tree: {venv} venv ({why}); make compile (mypyc, a minute or two)...", flush=True)
    env = {**os.environ, "PYTHONPATH": str(path / "src")}
    env.pop("VIRTUAL_ENV", None)
    done = subprocess.run(["make", "-C", str(path), "compile", *variables], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"make compile failed in {path}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    tree = Tree(path=path, commit=commit, python=python, venv=venv)
    # Written last: a build that stopped half-way has no marker and is made again.
    (path / MARKER).write_text(json.dumps({**asdict(tree), "path": str(path)}, indent=2) + "\n")
    (path / PARTIAL).unlink()
    print(f"baseline tree: {commit} built in {path}", flush=True)
    return tree


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("commit", help="a commit-ish of this repository")
    parser.add_argument("dir", type=Path, help="where the tree goes (made, or reused if it holds COMMIT built)")
    parser.add_argument("--own-venv", action="store_true", help="a venv of its own even if the dependencies match")
    args = parser.parse_args()
    tree = build(args.commit, args.dir, own_venv=args.own_venv)
    print(f"commit {tree.commit}\npython {tree.python}\nPYTHONPATH {tree.env['PYTHONPATH']}")


if __name__ == "__main__":
    main()
