"""Every benchmark README.md names runs, in its shortest mode, on the build `make up` makes.

README.md quotes figures from commands such as `python bench/gateway.py --duration 6`.
Each is found by reading the README (a benchmark named there later is covered with no
change here) and run as a subprocess with `--smoke` (every part of it once, briefly, the
same tables printed), with the environment the README gives it (`PYTHONHASHSEED=0 python
bench/...`), on the mypyc build: the compiled request path is what the README measures,
and what once made `bench/client_overhead.py` crash (an interpreted class cannot inherit
from a compiled one).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"
#: A benchmark command as the README writes it: `[NAME=value ...] python bench/NAME.py`.
COMMAND = re.compile(r"((?:\b[A-Z][A-Z0-9_]*=\S+ +)*)python bench/([\w-]+)\.py")
#: Named in README.md but not run here, each with why. None today: a benchmark that cannot
#: run here goes here with its reason, so that it is not skipped in silence.
EXCEPTIONS: dict[str, str] = {}
#: One smoke run's bound; the slowest (bench/gateway.py) took 29–37 s on two busy cores.
TIMEOUT_S = 150
#: A figure as the benchmarks print them (`0.262`, `46,366`, `18.0 ms`).
FIGURE = re.compile(r"\d+\.\d+|\d{1,3}(?:,\d{3})+")

pytestmark = [pytest.mark.bench, pytest.mark.timeout(TIMEOUT_S + 30)]


def named_benchmarks(readme: str) -> dict[str, dict[str, str]]:
    """The benchmarks `readme` names (`python bench/NAME.py`), each with the variables set before it."""
    found: dict[str, dict[str, str]] = {}
    for assignments, name in COMMAND.findall(readme):
        env = dict(a.split("=", 1) for a in assignments.split())
        found.setdefault(name, {}).update(env)
    return found


BENCHMARKS = named_benchmarks((ROOT / "README.md").read_text())


def compiled_modules() -> list[str]:
    """The modules the Makefile compiles (its COMPILED list), as dotted names."""
    makefile = (ROOT / "Makefile").read_text()
    listed = re.search(r"^COMPILED := ((?:.*\\\n)*.*)$", makefile, re.M)
    assert listed is not None, "the Makefile's COMPILED list moved"
    return ["meshop." + path.replace("/", ".") for path in listed.group(1).replace("\\\n", " ").split()]


@pytest.fixture(scope="module")
def compiled() -> None:
    """The mypyc build is in place (conftest refuses a stale one); CI must have it."""
    interpreted = [
        name for name in compiled_modules() if not str(importlib.util.find_spec(name).origin).endswith(".so")
    ]
    if interpreted:
        why = f"{len(interpreted)} modules the Makefile compiles are not (e.g. {interpreted[0]}): run `make compile`"
        if os.environ.get("CI") == "true":
            pytest.fail(f"the benchmarks run on the compiled build, and CI must have it: {why}")
        pytest.skip(why)


def smoke(name: str, env: dict[str, str], *args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    """`python bench/NAME.py --smoke [ARGS]`, its process group ended if it overruns; the run and its seconds."""
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, str(BENCH / f"{name}.py"), "--smoke", *args],
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # a benchmark's shop, proxies and servers are its children
    )
    try:
        out, err = process.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        pytest.fail(f"bench/{name}.py --smoke ran over {TIMEOUT_S} s\n{out[-3000:]}\n{err[-3000:]}")
    return subprocess.CompletedProcess(process.args, process.returncode, out, err), time.monotonic() - started


def test_the_readme_names_the_benchmarks_it_quotes() -> None:
    """The parse finds what the README quotes (were it to find none, nothing below would run)."""
    assert {"checkout", "client_overhead", "gateway"} <= set(BENCHMARKS)


def test_a_named_benchmark_is_found_with_its_environment() -> None:
    readme = "Run `python bench/a.py --rounds 2`, then `X_Y=1 Z=b python bench/b_c.py` and python bench/a.py."
    assert named_benchmarks(readme) == {"a": {}, "b_c": {"X_Y": "1", "Z": "b"}}


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_a_benchmark_the_readme_names_runs_and_prints_its_figures(name: str, compiled: None) -> None:
    if name in EXCEPTIONS:
        pytest.xfail(f"bench/{name}.py does not run here: {EXCEPTIONS[name]}")
    assert (BENCH / f"{name}.py").is_file(), f"README.md names bench/{name}.py, which does not exist"
    done, seconds = smoke(name, BENCHMARKS[name])
    shown = f"exit {done.returncode} after {seconds:.1f} s\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert done.returncode == 0, shown
    assert FIGURE.search(done.stdout), f"no figure printed: {shown}"
    print(f"bench/{name}.py --smoke: {seconds:.1f} s\n{done.stdout}")


def test_checkout_against_a_baseline_tree_prints_both_sides_and_the_targets(compiled: None, tmp_path: Path) -> None:
    """`bench/checkout.py --baseline TREE --smoke`, TREE being this tree (nothing to build): two shops
    loaded in turn, both sides' figures, the ratios against issue 26's targets, and the check
    that tracing, metrics and service identity were on in each shop."""
    report = tmp_path / "versus.json"
    done, seconds = smoke("checkout", {}, "--baseline", str(ROOT), "--json", str(report))
    shown = f"exit {done.returncode} after {seconds:.1f} s\n{done.stdout[-4000:]}\n{done.stderr[-3000:]}"
    assert done.returncode == 0, shown
    lines = done.stdout.splitlines()
    for side in ("baseline", "new"):
        assert any(re.match(rf"{side} +1 +{FIGURE.pattern}", line) for line in lines), shown
        assert f"  {side}: metrics on" in done.stdout, shown
        assert "tracing on" in done.stdout.split(f"  {side}: ", 1)[1].splitlines()[0], shown
        assert "identity on" in done.stdout.split(f"  {side}: ", 1)[1].splitlines()[0], shown
    targets = [line for line in lines if line.startswith("  target: ")]
    assert len(targets) == 5, shown  # throughput, CPU at 1 client, p50 at 1 client, errors, RSS
    assert all(line.endswith(("— met", "— NOT MET")) for line in targets), shown
    found = json.loads(report.read_text())
    assert set(found["results"]) == {"baseline", "new"}
    assert found["results"]["new"]["1"]["checkouts"] > 0
    assert {"gateway", "orders", "nats-server", "supervisor"} <= set(
        found["results"]["new"]["1"]["cpu_ms_per_checkout_by_process"]
    )
    print(f"bench/checkout.py --smoke --baseline {ROOT}: {seconds:.1f} s\n{done.stdout}")
