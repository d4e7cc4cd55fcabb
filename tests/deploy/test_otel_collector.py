"""The Collector's tail-sampling policies are the console's (deploy/otel/collector.yaml)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from meshop.console.sampling import SamplingPolicy

CONFIG = Path(__file__).parents[2] / "deploy" / "otel" / "collector.yaml"


def policies() -> dict[str, dict[str, Any]]:
    config = yaml.safe_load(CONFIG.read_text())
    assert "tail_sampling" in config["service"]["pipelines"]["traces"]["processors"]
    return {p["name"]: p for p in config["processors"]["tail_sampling"]["policies"]}


def test_the_collector_keeps_what_the_console_keeps() -> None:
    console = SamplingPolicy()
    found = policies()
    assert found["errors"]["status_code"]["status_codes"] == ["ERROR"]
    assert found["slow"]["latency"]["threshold_ms"] == console.slow_ms_default
    assert found["base"]["probabilistic"]["sampling_percentage"] == console.base_rate * 100
    [(route, rate)] = console.critical.items()
    method, template = route.split(" ")
    sub = {p["name"]: p for p in found["checkout"]["and"]["and_sub_policy"]}
    assert sub["checkout-route"]["string_attribute"] == {"key": "http.route", "values": [template]}
    assert sub["checkout-method"]["string_attribute"] == {"key": "http.request.method", "values": [method]}
    assert sub["checkout-rate"]["probabilistic"]["sampling_percentage"] == rate * 100


def test_the_decision_waits_longer_than_the_consoles_quiet_period() -> None:
    config = yaml.safe_load(CONFIG.read_text())
    wait = config["processors"]["tail_sampling"]["decision_wait"]
    assert wait.endswith("s")
    assert float(wait[:-1]) >= SamplingPolicy().decision_wait_s
