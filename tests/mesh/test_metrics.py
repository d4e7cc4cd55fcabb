"""The RED series a process exports: what prometheus_client's Counter and Histogram would."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from meshop.mesh.telemetry.metrics import Metrics


async def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = (await metrics.exposition()).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name.startswith("meshop_")
    }


async def test_requests_are_counted_by_status_and_their_durations_bucketed_cumulatively() -> None:
    metrics = Metrics("catalog")
    for seconds in (0.0004, 0.005, 0.3):  # 0.005 is a bucket's bound: `le` includes it
        metrics.observe("/products", "GET", 200, seconds)
    metrics.observe("/products", "GET", 404, 20.0)
    found = await samples(metrics)

    route = (("method", "GET"), ("route", "/products"))
    assert found[("meshop_http_requests_total", (*route, ("status", "200")))] == 3
    assert found[("meshop_http_requests_total", (*route, ("status", "404")))] == 1

    def bucket(le: str) -> float:
        return found[("meshop_http_request_duration_seconds_bucket", tuple(sorted((*route, ("le", le)))))]

    assert bucket("0.0005") == 1
    assert bucket("0.0025") == 1
    assert bucket("0.005") == 2
    assert bucket("0.25") == 2
    assert bucket("0.5") == 3
    assert bucket("10.0") == 3
    assert bucket("+Inf") == 4
    assert found[("meshop_http_request_duration_seconds_count", route)] == 4
    assert abs(found[("meshop_http_request_duration_seconds_sum", route)] - 20.3054) < 1e-9


async def test_calls_by_outcome_and_requests_in_flight() -> None:
    metrics = Metrics("gateway")
    metrics.observe_call("catalog", "2xx", 0.002)
    metrics.observe_call("catalog", "transport_error", 0.5)
    metrics.in_flight += 2
    found = await samples(metrics)

    assert found[("meshop_client_calls_total", (("outcome", "2xx"), ("target", "catalog")))] == 1
    assert found[("meshop_client_calls_total", (("outcome", "transport_error"), ("target", "catalog")))] == 1
    assert found[("meshop_client_call_duration_seconds_count", (("target", "catalog"),))] == 2
    assert found[("meshop_http_requests_in_flight", ())] == 2
