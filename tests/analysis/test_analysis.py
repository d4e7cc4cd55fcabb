"""The seeds' math, directly and through `meshop analyze` (the seed's own examples)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from meshop.analysis import littles_law, serial_reliability
from meshop.cli import app


@pytest.mark.parametrize(
    ("args", "printed"),
    [
        (["efficiency", "100", "110", "90"], "0.80"),
        (["reliability", "0.999", "0.998", "0.997", "0.996", "0.995"], "0.985"),
        (["littles-law", "--arrival-rate", "100", "--time-in-system", "0.5"], "L = 50"),
    ],
)
def test_meshop_analyze_prints_the_seed_examples(args: list[str], printed: str) -> None:
    result = CliRunner().invoke(app, ["analyze", *args])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == printed


def test_a_reliability_outside_0_1_is_a_usage_error() -> None:
    result = CliRunner().invoke(app, ["analyze", "reliability", "1.5"])
    assert result.exit_code == 2


@given(st.lists(st.floats(min_value=0, max_value=1), min_size=1, max_size=10))
def test_serial_reliability_never_exceeds_its_weakest_step(steps: list[float]) -> None:
    assert serial_reliability(steps) <= min(steps) + 1e-12


def test_littles_law_is_lambda_times_w() -> None:
    assert littles_law(arrival_rate=20, time_in_system=0.25) == 5
    with pytest.raises(ValueError, match="negative"):
        littles_law(arrival_rate=-1, time_in_system=1)
