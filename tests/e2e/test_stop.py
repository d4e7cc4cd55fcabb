"""`meshop up` stops cleanly: every process leaves NATS within its drain bound.

A subscription left behind when a process stops (an event consumer's pull cancelled
mid-fetch, a KV watch whose reader was cancelled) holds an answer nobody reads, and
the connection's drain waits for it until nats-py's bound (2 s) gives up with a
`DrainTimeoutError` warning. The users service hit it on most stops.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.e2e.conftest import start_shop

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


def test_a_shop_stops_without_any_process_timing_out_its_nats_drain(tmp_path: Path) -> None:
    shop = start_shop(tmp_path / "shop")
    time.sleep(2.5)  # every consumer is in its fetch loop (1 s pulls) when the stop comes
    started = time.monotonic()
    assert shop.stop() == 0
    stopped_s = time.monotonic() - started
    output = shop.output()
    assert "DrainTimeoutError" not in output
    assert "error while closing" not in output
    assert "stopped in" in output, output[-2000:]
    assert stopped_s < 10.0  # the supervisor's own bound
