"""Capacity planning (`meshop plan`): the model's worked example, its invariants, the command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from meshop.analysis.plan import (
    Measurement,
    NoTrafficError,
    measure,
    measurements_from_json,
    measurements_to_json,
    plan,
    processor_sharing_time,
    replicas_for,
)
from meshop.cli import app

# Ten seconds of a shop: the gateway at 100 req/s on a quarter of a core (capacity 400 req/s),
# two catalog instances at 30 req/s each on 6% (capacity 500 req/s), orders idle.
WINDOW = [
    Measurement("gateway", instances=1, window_s=10, requests=1000, busy_s=5.0, cpu_s=2.5),
    Measurement("catalog", instances=2, window_s=10, requests=600, busy_s=1.2, cpu_s=1.2),
    Measurement("orders", instances=1, window_s=10, requests=0, busy_s=0, cpu_s=0.3),
]


def test_a_measurement_gives_lambda_w_utilisation_and_capacity() -> None:
    catalog = WINDOW[1]
    assert catalog.rate == 60
    assert catalog.per_instance_rate == 30
    assert catalog.time_in_service_s == pytest.approx(0.002)
    assert catalog.utilisation == pytest.approx(0.06)
    assert catalog.capacity == pytest.approx(500)


def test_the_worked_example_at_1000_rps_with_30_percent_headroom() -> None:
    result = plan(WINDOW, rps=1000)
    gateway, catalog, orders = result.services
    assert (result.headroom, result.entry_rate) == (0.3, 100)

    # 1000 / (400 x 0.7) = 3.57 -> 4 instances at 250 req/s each, 62.5% of a core.
    assert (gateway.service, gateway.replicas) == ("gateway", 4)
    assert gateway.planned_rate == pytest.approx(250)
    assert gateway.planned_utilisation == pytest.approx(0.625)
    # W = 5 ms measured at 25%: 2.5 ms of CPU took 2.5 / 0.75 = 3.33 ms, 1.67 ms was waiting.
    # At 62.5%: 1.67 + 2.5 / 0.375 = 8.33 ms, so L = 250 x 8.33 ms = 2.08 in flight per instance.
    assert gateway.planned_time_s == pytest.approx(0.005 - 0.0025 / 0.75 + 0.0025 / 0.375)
    assert gateway.concurrency == pytest.approx(250 * gateway.planned_time_s)
    assert gateway.concurrency == pytest.approx(2.0833, abs=1e-4)

    # Share 0.6 -> 600 req/s; 600 / (500 x 0.7) = 1.71 -> 2 instances at 300 req/s, 60%.
    assert (catalog.share, catalog.demand_rps, catalog.replicas) == (pytest.approx(0.6), pytest.approx(600), 2)
    assert catalog.planned_time_s == pytest.approx(0.002 / 0.4)  # all of W was CPU: nothing waited on
    assert catalog.concurrency == pytest.approx(1.5)

    assert orders.replicas is None
    assert orders.concurrency is None
    assert orders.note == "no traffic measured"


def test_no_traffic_at_the_entry_is_no_plan() -> None:
    idle = [Measurement("gateway", instances=1, window_s=5, requests=0, busy_s=0, cpu_s=0.1)]
    with pytest.raises(ValueError, match="no traffic measured at gateway"):
        plan(idle, rps=100)


def test_no_traffic_says_what_was_measured() -> None:
    idle = [
        Measurement("gateway", instances=2, window_s=5, requests=0, busy_s=0, cpu_s=0.1),
        Measurement("users", instances=1, window_s=5, requests=3, busy_s=0.01, cpu_s=0.1),
    ]
    with pytest.raises(NoTrafficError) as raised:
        plan(idle, rps=100)
    assert "in 5.0 s (3 instances of 2 services measured; they served 3 requests in all)" in str(raised.value)


def test_requests_without_measurable_cpu_say_so_instead_of_a_number() -> None:
    window = [*WINDOW[:1], Measurement("users", instances=1, window_s=10, requests=3, busy_s=0.01, cpu_s=0)]
    users = plan(window, rps=100).services[1]
    assert users.replicas is None
    assert "no CPU time measured" in users.note


def test_replicas_round_up_and_never_go_below_one() -> None:
    assert replicas_for(1000, 400, 0.3) == 4
    assert replicas_for(280, 400, 0.3) == 1
    assert replicas_for(0, 400, 0.3) == 1


@pytest.mark.parametrize("headroom", [0, 1, -0.1, 1.5])
def test_headroom_is_a_fraction_strictly_between_0_and_1(headroom: float) -> None:
    with pytest.raises(ValueError, match="headroom"):
        replicas_for(10, 100, headroom)


def test_processor_sharing_time_is_s_over_1_minus_rho() -> None:
    assert processor_sharing_time(0.002, 0.5) == pytest.approx(0.004)
    with pytest.raises(ValueError, match="below 100%"):
        processor_sharing_time(0.002, 1.0)


def scrape(requests: float, busy_s: float, cpu_s: float) -> list[tuple[str, dict[str, str], float]]:
    """What the parser yields for one process (two routes, to show they are summed)."""
    return [
        ("meshop_http_request_duration_seconds_count", {"route": "a", "method": "GET"}, requests / 2),
        ("meshop_http_request_duration_seconds_count", {"route": "b", "method": "GET"}, requests / 2),
        ("meshop_http_request_duration_seconds_sum", {"route": "a", "method": "GET"}, busy_s),
        ("meshop_http_requests_in_flight", {}, 3.0),
        ("process_cpu_seconds_total", {}, cpu_s),
    ]


def test_measure_sums_each_services_instances_between_two_scrapes() -> None:
    first = {
        ("catalog", "c1"): scrape(100, 1.0, 10.0),
        ("catalog", "c2"): scrape(50, 0.5, 9.0),
        ("orders", "o1"): scrape(500, 5.0, 20.0),  # restarts: its counters go down
        ("users", "gone"): scrape(1, 1, 1),  # only in the first scrape
    }
    last = {
        ("catalog", "c1"): scrape(400, 1.6, 10.6),
        ("catalog", "c2"): scrape(350, 1.2, 9.6),
        ("orders", "o1"): scrape(3, 0.1, 0.4),
        ("gateway", "new"): scrape(9, 1, 1),  # only in the last one
    }
    (catalog,) = measure(first, last, window_s=10)
    assert (catalog.service, catalog.instances, catalog.window_s, catalog.requests) == ("catalog", 2, 10, 600)
    assert (catalog.busy_s, catalog.cpu_s) == (pytest.approx(1.3), pytest.approx(1.2))


def test_measurements_survive_a_json_round_trip() -> None:
    assert measurements_from_json(json.loads(json.dumps(measurements_to_json(WINDOW)))) == WINDOW


def test_a_malformed_measurements_file_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="window_s and services"):
        measurements_from_json({"services": []})


def write_window(tmp_path: Path, measurements: list[Measurement]) -> str:
    path = tmp_path / "measured.json"
    path.write_text(json.dumps(measurements_to_json(measurements)))
    return str(path)


def test_meshop_plan_from_a_file_prints_the_table_and_the_stated_headroom(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["plan", "--rps", "1000", "--from-file", write_window(tmp_path, WINDOW)])
    assert result.exit_code == 0, result.output
    assert "headroom 30%: each instance planned at <= 70% of one core" in result.output
    gateway = next(line for line in result.output.splitlines() if "│ gateway" in line)
    assert [cell.strip() for cell in gateway.split("│")[1:-1]] == [
        "gateway", "1", "100.0", "25%", "400 req/s", "5.00 ms", "1.00", "4", "2.1", "",
    ]  # fmt: skip
    assert "no traffic measured" in result.output


def test_meshop_plan_json_carries_the_plan_and_the_measurements_to_plan_again(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["plan", "--rps", "500", "--headroom", "0.5", "--json", "--from-file", write_window(tmp_path, WINDOW)]
    )
    assert result.exit_code == 0, result.output
    printed = json.loads(result.output)
    assert printed["plan"]["headroom"] == 0.5
    assert {s["service"]: s["replicas"] for s in printed["plan"]["services"]} == {
        "gateway": 3,  # 500 / (400 x 0.5) = 2.5
        "catalog": 2,  # 300 / (500 x 0.5) = 1.2
        "orders": None,
    }
    assert measurements_from_json(printed["measurements"]) == WINDOW


def test_meshop_plan_without_traffic_at_the_gateway_fails_with_the_reason(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["plan", "--rps", "10", "--from-file", write_window(tmp_path, WINDOW[2:])])
    assert result.exit_code == 1
    assert "no traffic measured at gateway" in result.output


positive = st.floats(min_value=1e-3, max_value=1e6, allow_nan=False)
headrooms = st.floats(min_value=0.01, max_value=0.99)


@given(a=st.floats(min_value=0, max_value=1e7), b=st.floats(min_value=0, max_value=1e7), capacity=positive, h=headrooms)
def test_replicas_are_at_least_one_and_never_fall_as_the_rate_grows(
    a: float, b: float, capacity: float, h: float
) -> None:
    low, high = sorted((a, b))
    assert 1 <= replicas_for(low, capacity, h) <= replicas_for(high, capacity, h)


@given(rps=st.floats(min_value=0, max_value=1e7), capacity=positive, h1=headrooms, h2=headrooms)
def test_more_headroom_never_plans_fewer_replicas(rps: float, capacity: float, h1: float, h2: float) -> None:
    less, more = sorted((h1, h2))
    assert replicas_for(rps, capacity, less) <= replicas_for(rps, capacity, more)


@given(
    rps=st.floats(min_value=0.1, max_value=1e6),
    h=headrooms,
    requests=st.floats(min_value=1, max_value=1e6),
    busy_s=st.floats(min_value=0, max_value=1e4),
    cpu_s=st.floats(min_value=1e-3, max_value=10),
)
def test_every_planned_instance_keeps_its_headroom_and_obeys_littles_law(
    rps: float, h: float, requests: float, busy_s: float, cpu_s: float
) -> None:
    window = [Measurement("gateway", instances=1, window_s=10, requests=requests, busy_s=busy_s, cpu_s=cpu_s)]
    (row,) = plan(window, rps=rps, headroom=h).services
    assert row.replicas is not None
    assert row.planned_rate is not None
    assert row.planned_utilisation is not None
    assert row.planned_time_s is not None
    assert row.planned_utilisation <= (1 - h) * (1 + 1e-9)
    assert row.replicas * row.planned_rate == pytest.approx(rps)
    assert row.concurrency == pytest.approx(row.planned_rate * row.planned_time_s)
