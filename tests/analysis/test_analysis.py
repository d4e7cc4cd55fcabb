"""The seeds' math, directly and through `meshop analyze` (the seed's own examples)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from meshop.analysis import efficiency, littles_law, serial_reliability
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


def test_seed_002_cost_estimate_is_reproduced_and_its_looseness_shown() -> None:
    from meshop.analysis.cost import Prices, Workload, estimate

    result = estimate(Workload(), Prices.load())
    assert round(result.direct_requests, 2) == 10.00
    assert result.gb_seconds == 1_875_000
    assert round(result.direct_compute, 2) == 31.25  # the seed prints 31.26
    assert round(result.direct_total, 2) == 41.25  # ≈ the seed's 41.26
    assert round(result.gateway_requests, 2) == 175.00
    assert round(result.transfer_gib, 2) == 143.05  # the seed's "143 GB" is GiB
    assert round(result.gateway_total, 1) == 187.9
    assert round(result.gateway_with_function, 2) == 229.12  # the gateway does not replace the function


def test_cost_scales_with_its_inputs() -> None:
    from meshop.analysis.cost import Prices, Workload, estimate

    base = estimate(Workload(), Prices.load())
    double = estimate(Workload(requests_per_month=100e6), Prices.load())
    assert double.direct_total == pytest.approx(2 * base.direct_total)
    assert double.gateway_total == pytest.approx(2 * base.gateway_total)
    assert estimate(Workload(requests_per_month=0), Prices.load()).gateway_with_function == 0
    with pytest.raises(ValueError, match="negative"):
        Workload(memory_mb=-1)


def test_meshop_cost_prints_the_seed_figures_and_the_full_gateway_cost() -> None:
    result = CliRunner().invoke(app, ["cost"])
    assert result.exit_code == 0, result.output
    for figure in ("$10.00", "$31.25", "$41.25", "$175.00", "143.05 GiB", "$187.87", "$229.12"):
        assert figure in result.output
    assert "seed 002 prints $31.26" in result.output
    other = CliRunner().invoke(app, ["cost", "--requests", "1e6"])
    assert "seed 002 prints" not in other.output
    assert CliRunner().invoke(app, ["cost", "--duration-ms", "-5"]).exit_code == 2


loads = st.lists(st.integers(min_value=0, max_value=10**6), min_size=1, max_size=20)


@given(loads)
def test_efficiency_never_exceeds_one(counts: list[int]) -> None:
    assert efficiency(counts) <= 1.0


@given(loads)
def test_efficiency_is_one_exactly_when_every_load_is_equal(counts: list[int]) -> None:
    assert (efficiency(counts) == 1.0) == (len(set(counts)) == 1)


@given(st.integers(min_value=1, max_value=50))
def test_efficiency_is_one_when_nothing_was_sent(instances: int) -> None:
    assert efficiency([0] * instances) == 1.0


def test_efficiency_goes_below_zero_as_the_seed_writes_it() -> None:
    # seed 001 calls 0 the worst case, but its formula gives -2 for (0, 0, 300): kept as written
    assert efficiency([0, 0, 300]) == pytest.approx(-2.0)
    assert efficiency([100, 110, 90]) == pytest.approx(0.80)


def test_serial_reliability_of_the_seeds_example() -> None:
    assert serial_reliability([0.999, 0.998, 0.997, 0.996, 0.995]) == pytest.approx(0.985, abs=5e-4)
