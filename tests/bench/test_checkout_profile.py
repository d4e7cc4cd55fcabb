"""bench/checkout_profile.py's split of sampled stacks into stages (no shop needed)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture(scope="module")
def profile() -> ModuleType:
    sys.path.insert(0, str(BENCH))  # it imports its siblings (checkout, _common)
    try:
        spec = importlib.util.spec_from_file_location("checkout_profile", BENCH / "checkout_profile.py")
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCH))


LOOP = "Runner.run (asyncio/runners.py:118)"
HANDLER = "Orders.create (meshop/services/orders/handlers.py:80)"
QUERY = "Connection.execute (sqlalchemy/engine/base.py:1416)"


def test_a_sample_belongs_to_the_innermost_frame_a_stage_claims(profile: ModuleType) -> None:
    assert profile.stage_of([LOOP, HANDLER, QUERY]) == "database"
    assert profile.stage_of([LOOP, HANDLER]) == "handler"
    assert profile.stage_of([LOOP]) == "event loop"
    assert profile.stage_of(["main (somewhere.py:1)"]) == "other"


def test_the_long_poll_and_the_outbox_claim_every_sample_under_them(profile: ModuleType) -> None:
    wait = "Settlements.wait (meshop/services/orders/handlers.py:210)"
    relay = "OutboxRelay.publish_pending (meshop/mesh/events/outbox.py:180)"
    assert profile.stage_of([LOOP, HANDLER, wait, QUERY]) == "long poll"
    assert profile.stage_of([LOOP, relay, QUERY]) == "outbox"


def test_raw_output_is_counted_by_stage_and_by_leaf(profile: ModuleType, tmp_path: Path) -> None:
    raw = tmp_path / "1.raw"
    raw.write_text(f"{LOOP};{HANDLER};{QUERY} 3\n{LOOP} 1\nnot a sample line\n")
    stages, leaves = profile.read_samples(raw)
    assert stages == {"database": 3, "event loop": 1}
    assert leaves["Connection.execute (sqlalchemy/engine/base.py)"] == 3
