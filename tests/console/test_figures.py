"""The console's figures from canned scrapes: no processes, no sleeps (rounds carry their time)."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest

from meshop.analysis import efficiency, littles_law
from meshop.analysis.live import parse
from meshop.console import figures
from meshop.console.scraper import Round, Seen
from meshop.contracts import console as contract
from meshop.mesh.registry import Instance
from meshop.mesh.telemetry.metrics import Metrics


def instance(service: str, instance_id: str = "1") -> Instance:
    return Instance(service=service, instance_id=instance_id, address="127.0.0.1", port=9000, pid=42)


def served(service: str, *, ok: int, failed: int = 0, seconds: float = 0.01, in_flight: int = 0) -> str:
    """The exposition of a process that served `ok` 200s and `failed` 500s of `seconds` each."""
    metrics = Metrics(service)
    for _ in range(ok):
        metrics.observe(f"{service}.get", "GET", 200, seconds)
    for _ in range(failed):
        metrics.observe(f"{service}.get", "GET", 500, seconds)
    metrics.in_flight = in_flight
    return generate_latest(metrics.registry).decode()


def seen(service: str, text: str | None, *, instance_id: str = "1", health: str = "ready") -> Seen:
    return Seen(instance(service, instance_id), health, parse(text) if text is not None else None)


def at(t: float, *seens: Seen) -> Round:
    return Round(at=t, wall=1_700_000_000.0 + t, seen=seens)


def red(overview: contract.Overview, service: str) -> contract.ServiceFigures:
    return next(r for r in overview.red if r.service == service)


def test_before_the_first_scrape_the_overview_is_empty_but_explains_e() -> None:
    empty = figures.overview([], window_s=10, traces={"kept": 0})
    assert (empty.scraped_at, empty.services, empty.red) == (None, [], [])
    assert "-2" in empty.efficiency_note
    assert empty.traces == {"kept": 0}


def test_totals_are_the_counters_and_rates_are_over_the_window() -> None:
    history = [
        at(0.0, seen("orders", served("orders", ok=50, failed=0))),
        at(10.0, seen("orders", served("orders", ok=145, failed=5))),
    ]
    o = figures.overview(history, window_s=10, traces={})
    orders = red(o, "orders")
    assert (orders.requests_total, orders.errors_total) == (150, 5)
    assert orders.rate_rps == pytest.approx(10.0)  # 100 requests in 10 s
    assert orders.error_rate == pytest.approx(0.05)
    assert orders.latency_mean_ms == pytest.approx(10.0)
    assert o.window_s == 10.0
    assert o.scraped_at == 1_700_000_010.0


def test_figures_are_summed_over_a_services_instances() -> None:
    history = [
        at(0.0, seen("catalog", served("catalog", ok=0), instance_id="a"), seen("catalog", None, instance_id="b")),
        at(
            2.0,
            seen("catalog", served("catalog", ok=10), instance_id="a"),
            seen("catalog", served("catalog", ok=30), instance_id="b", health="not ready (503)"),
        ),
    ]
    catalog = red(figures.overview(history, window_s=10, traces={}), "catalog")
    assert (catalog.instances, catalog.ready, catalog.requests_total) == (2, 1, 40)
    assert catalog.rate_rps == pytest.approx(20.0)  # b had no earlier scrape: all 30 are in the window


def test_a_restarted_process_counts_from_zero_again() -> None:
    history = [
        at(0.0, seen("users", served("users", ok=500))),
        at(5.0, seen("users", served("users", ok=20))),  # restarted: its counters began again
    ]
    users = red(figures.overview(history, window_s=10, traces={}), "users")
    assert users.rate_rps == pytest.approx(4.0)
    assert users.requests_total == 20


def test_rounds_older_than_the_window_are_left_out() -> None:
    history = [at(float(t), seen("orders", served("orders", ok=t * 100))) for t in range(0, 30, 2)]
    o = figures.overview(history, window_s=10, traces={})
    assert o.window_s == 10.0
    assert red(o, "orders").rate_rps == pytest.approx(100.0)


def test_littles_law_compares_lambda_w_with_the_mean_in_flight() -> None:
    history = [
        at(0.0, seen("payments", served("payments", ok=0, in_flight=1))),
        at(2.0, seen("payments", served("payments", ok=100, seconds=0.05, in_flight=3))),
        at(4.0, seen("payments", served("payments", ok=200, seconds=0.05, in_flight=2))),
    ]
    row = next(r for r in figures.overview(history, window_s=10, traces={}).littles_law if r.service == "payments")
    assert row.arrival_rate == pytest.approx(50.0)
    assert row.time_in_system_ms == pytest.approx(50.0)
    assert row.predicted_l == pytest.approx(littles_law(arrival_rate=50.0, time_in_system=0.05))
    assert row.observed_l == pytest.approx(2.0)  # (1 + 3 + 2) / 3


def test_latency_quantiles_interpolate_within_buckets() -> None:
    buckets = {0.01: 50.0, 0.1: 90.0, 1.0: 100.0, float("inf"): 100.0}
    assert figures.quantile(0.5, buckets) == pytest.approx(0.01)
    assert figures.quantile(0.7, buckets) == pytest.approx(0.01 + 0.09 * 0.5)
    assert figures.quantile(0.99, buckets) == pytest.approx(0.1 + 0.9 * 0.9)
    assert figures.quantile(0.5, {0.1: 0.0, float("inf"): 0.0}) is None
    assert figures.quantile(0.99, {0.1: 1.0, float("inf"): 10.0}) == pytest.approx(0.1)


BALANCER = """\
# TYPE meshop_balancer_efficiency gauge
meshop_balancer_efficiency{target="catalog",window="total"} -2.0
meshop_balancer_efficiency{target="catalog",window="10s"} 0.5
# TYPE meshop_balancer_picks gauge
meshop_balancer_picks{target="catalog",instance="a"} 0.0
meshop_balancer_picks{target="catalog",instance="b"} 0.0
meshop_balancer_picks{target="catalog",instance="c"} 300.0
# TYPE meshop_breaker_state gauge
meshop_breaker_state{target="catalog",instance="a"} 2.0
meshop_breaker_state{target="catalog",instance="b"} 1.0
meshop_breaker_state{target="catalog",instance="c"} 0.0
"""


def test_efficiency_is_what_each_balancer_reports_even_below_zero() -> None:
    history = [at(0.0, seen("gateway", BALANCER, instance_id="g"), seen("catalog", "", instance_id="a"))]
    o = figures.overview(history, window_s=10, traces={})
    (row,) = o.efficiency
    assert (row.caller, row.target, row.efficiency, row.recent) == ("gateway/g", "catalog", -2.0, 0.5)
    assert row.sent == {"a": 0.0, "b": 0.0, "c": 300.0}
    assert efficiency([0, 0, 300]) == -2.0  # the note's example is the formula's own answer
    assert "below 0" in o.efficiency_note


def test_breakers_are_listed_per_caller_and_the_worst_marks_the_instance() -> None:
    history = [at(0.0, seen("gateway", BALANCER, instance_id="g"), seen("catalog", "", instance_id="a"))]
    o = figures.overview(history, window_s=10, traces={})
    assert [(b.instance, b.state) for b in o.breakers] == [("a", "open"), ("b", "half_open"), ("c", "closed")]
    by_id = {i.instance_id: i for i in o.instances}
    assert (by_id["a"].breaker, by_id["g"].breaker) == ("open", "none")
    assert o.services == ["catalog", "gateway"]


ORDERS = """\
# TYPE meshop_client_calls counter
meshop_client_calls_total{target="inventory",outcome="2xx"} 10.0
meshop_client_calls_total{target="payments",outcome="2xx"} 9.0
meshop_client_calls_total{target="payments",outcome="5xx"} 1.0
meshop_client_calls_total{target="shipping",outcome="2xx"} 8.0
meshop_client_calls_total{target="shipping",outcome="4xx"} 2.0
# TYPE meshop_sagas gauge
meshop_sagas{saga="checkout",state="completed"} 7.0
meshop_sagas{saga="checkout",state="compensated"} 1.0
# TYPE meshop_outbox_pending_events gauge
meshop_outbox_pending_events 3.0
# TYPE meshop_outbox_oldest_pending_age_seconds gauge
meshop_outbox_oldest_pending_age_seconds 1.5
# TYPE meshop_outbox_published_events gauge
meshop_outbox_published_events 40.0
"""
USERS = """\
# TYPE meshop_consumer_pending_events gauge
meshop_consumer_pending_events{consumer="users.order-stats"} 4.0
# TYPE meshop_consumer_applied_events gauge
meshop_consumer_applied_events{consumer="users.order-stats"} 12.0
"""


def test_checkout_reliability_is_the_product_of_its_steps() -> None:
    o = figures.overview([at(0.0, seen("orders", ORDERS))], window_s=10, traces={})
    steps = {s.step: s.reliability for s in o.reliability.steps}
    assert steps == {"inventory": 1.0, "payments": 0.9, "shipping": 1.0}  # a 4xx is an answer
    assert o.reliability.r == pytest.approx(0.9)


def test_sagas_and_backlogs_are_counted_once_per_service_not_per_replica() -> None:
    history = [
        at(
            0.0,
            seen("orders", ORDERS, instance_id="1"),
            seen("orders", ORDERS, instance_id="2"),
            seen("users", USERS, instance_id="1"),
            seen("users", USERS, instance_id="2"),
        )
    ]
    o = figures.overview(history, window_s=10, traces={})
    assert [(s.state, s.count) for s in o.sagas] == [("compensated", 1.0), ("completed", 7.0)]
    (outbox,) = o.outbox
    assert (outbox.pending, outbox.oldest_pending_age_s, outbox.published) == (3.0, 1.5, 80.0)
    (consumer,) = o.consumers
    assert (consumer.consumer, consumer.pending, consumer.applied) == ("users.order-stats", 4.0, 24.0)


def test_an_instance_that_did_not_answer_is_shown_without_figures() -> None:
    o = figures.overview([at(0.0, seen("shipping", None, health="unreachable"))], window_s=10, traces={})
    (shipping,) = o.instances
    assert (shipping.health, shipping.scraped) == ("unreachable", False)
    assert red(o, "shipping").requests_total == 0


def test_the_samples_kept_are_those_the_figures_read_and_give_the_same_figures() -> None:
    metrics = Metrics("orders")
    for status in (200, 200, 500):
        metrics.observe("orders.get", "GET", status, 0.02)
    for outcome in ("2xx", "5xx"):
        metrics.observe_call("inventory", outcome, 0.01)  # the client's buckets: no figure reads them
    text = generate_latest(metrics.registry).decode()
    kept, every = parse(text, figures.READ), parse(text)
    assert {name for name, _, _ in kept} <= figures.READ
    assert [s for s in every if s[0] in figures.READ] == kept  # the same samples, labels and values
    assert any(name.startswith("meshop_client_") for name, _, _ in every)

    def overview(samples: list[tuple[str, dict[str, str], float]]) -> contract.Overview:
        first = at(0.0, Seen(instance("orders"), "ready", None))
        return figures.overview([first, at(2.0, Seen(instance("orders"), "ready", samples))], window_s=10, traces={})

    assert overview(kept) == overview(every)
    assert red(overview(kept), "orders").error_rate > 0
