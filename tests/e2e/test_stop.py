"""`meshop up` starts telling where everything is, and a Ctrl-C stops it cleanly.

A subscription left behind when a process stops (an event consumer's pull cancelled
mid-fetch, a KV watch whose reader was cancelled) holds an answer nobody reads, and
the connection's drain waits for it until nats-py's bound (2 s) gives up with a
`DrainTimeoutError` warning. The users service hit it on most stops. And every process
warned "registry unreachable" when its own stop closed its NATS connection.
"""

from __future__ import annotations

import re
import shlex
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.conftest import start_shop

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

RUN_S = 2.5


@dataclass
class Stopped:
    url: str
    data_dir: Path
    code: int
    output: str
    #: Seconds from the Ctrl-C to the supervisor's exit, as the test measured them.
    stop_s: float
    #: The output of `meshop status` run as the ready line says, while the shop ran.
    status: subprocess.CompletedProcess[str]


@pytest.fixture(scope="module")
def stopped(tmp_path_factory: pytest.TempPathFactory) -> Stopped:
    """One shop, started, asked for its status as it says, run a little, then stopped with Ctrl-C."""
    shop = start_shop(tmp_path_factory.mktemp("stop"))
    try:
        hint = re.search(r"other commands, in another terminal: (.+) status(.*?)  \(", shop.output())
        assert hint is not None, shop.output()[-2000:]
        status = subprocess.run(
            [*shlex.split(hint[1]), "status", *shlex.split(hint[2])], capture_output=True, text=True, timeout=60
        )
        time.sleep(RUN_S)  # every consumer is in its fetch loop (1 s pulls) when the stop comes
    finally:
        started = time.monotonic()
        code = shop.stop(sig=signal.SIGINT)  # what Ctrl-C in its terminal sends
        stop_s = time.monotonic() - started
    return Stopped(shop.url, shop.data_dir, code, shop.output(), stop_s, status)


def after_the_stop_began(output: str) -> list[str]:
    lines = output.splitlines()
    begun = next(i for i, line in enumerate(lines) if "meshop | stopping" in line)
    return lines[begun:]


def test_the_ready_line_names_the_console(stopped: Stopped) -> None:
    [ready] = [line for line in stopped.output.splitlines() if "the shop is at" in line]
    assert f"the shop is at {stopped.url} · console {stopped.url}/console" in ready


def test_the_other_commands_run_as_the_shop_says_to_run_them(stopped: Stopped) -> None:
    assert stopped.status.returncode == 0, stopped.status.stderr
    assert "gateway" in stopped.status.stdout


def test_a_shop_stops_without_any_process_timing_out_its_nats_drain(stopped: Stopped) -> None:
    assert stopped.code == 0
    assert "DrainTimeoutError" not in stopped.output
    assert "error while closing" not in stopped.output
    assert stopped.stop_s < 10.0  # the supervisor's own bound


def test_a_clean_stop_prints_no_warning(stopped: Stopped) -> None:
    stopping = after_the_stop_began(stopped.output)
    assert "registry unreachable" not in stopped.output
    assert [line for line in stopping if re.search(r"\[(warning|error|critical) *\]|Traceback", line)] == []


def test_the_last_line_says_how_long_the_stop_took_and_how_long_the_shop_ran(stopped: Stopped) -> None:
    last = stopped.output.rstrip().splitlines()[-1]
    said = re.fullmatch(r"meshop \| stopped in (\d+\.\d)s \(the shop ran (\d+\.\d)s\)", last)
    assert said is not None, last
    assert float(said[1]) <= stopped.stop_s + 0.1  # the stop, not the uptime
    assert float(said[2]) >= RUN_S


def test_a_stopped_shop_leaves_no_url_behind(stopped: Stopped) -> None:
    assert not (stopped.data_dir / "nats.url").exists()
    assert not (stopped.data_dir / "gateway.url").exists()
