"""deploy/prometheus and deploy/grafana: valid for promtool, and every metric they query is one
that meshop exports (a renamed or removed metric fails here, not on an operator's screen)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from meshop.mesh.client.client import ServiceClient
from meshop.mesh.client.metrics import ClientMetrics
from meshop.mesh.registry import StaticRegistry
from meshop.mesh.security import scrape_token
from meshop.mesh.service.settings import Settings
from meshop.mesh.telemetry.metrics import Metrics

ROOT = Path(__file__).parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "meshop-dashboard.json"
#: Series Prometheus makes itself rather than scrapes.
SYNTHETIC = {"up"}
_NOT_METRICS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing: .ci/run installs Debian's prometheus package")
        pytest.skip("promtool not installed (apt-get install --no-install-recommends prometheus)")
    return found


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, check=False, cwd=cwd, timeout=60)


def exported_names() -> set[str]:
    """Every series name a meshop process can expose.

    The toolkit's own metrics from a live exposition (process collector and client
    collector included); what services register with `metrics.gauge()` / `.histogram()`
    from their call sites, since those need a running service's stores.
    """
    metrics = Metrics("test")
    metrics.observe("catalog.get", "GET", 200, 0.01)
    metrics.observe_call("inventory", "2xx", 0.01)
    metrics.registry.register(
        ClientMetrics(ServiceClient(StaticRegistry()))
    )  # no target yet: the collector's gauges, no samples
    names = set()
    for family in text_string_to_metric_families(generate_latest(metrics.registry).decode()):
        names.update(sample.name for sample in family.samples)
        if family.type == "gauge":  # a collector's family with no samples yet still names itself
            names.add(family.name)
        elif family.type == "counter":
            names.add(f"{family.name}_total")
    for source in (ROOT / "src" / "meshop").rglob("*.py"):
        for kind, name in re.findall(r"\.(gauge|histogram)\(\s*\"([a-zA-Z_:][a-zA-Z0-9_:]*)\"", source.read_text()):
            names.update([name] if kind == "gauge" else [f"{name}_bucket", f"{name}_sum", f"{name}_count"])
    return names


def referenced_names(expr: str) -> set[str]:
    """The series names a PromQL expression selects (not functions, labels or keywords)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    expr = re.sub(r"\{[^}]*\}", "", expr)  # matchers
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    tokens = re.findall(r"(?<![\w.:])([a-zA-Z_:][\w:]*)(?![\w:])(?!\s*\()", expr)
    return {t for t in tokens if t.lower() not in _NOT_METRICS}


def rules() -> list[dict[str, Any]]:
    loaded = yaml.safe_load((PROMETHEUS / "rules.yml").read_text())
    return [rule for group in loaded["groups"] for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def dashboard_queries() -> list[str]:
    queries = [t["expr"] for p in dashboard()["panels"] for t in p.get("targets", [])]
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            (metric,) = re.findall(r"label_values\((\w+),", variable["definition"])
            queries.append(metric)
    return queries


def checkout(root: Path) -> Path:
    """deploy/prometheus copied under `root` as in the repository, beside the scrape token
    `make up` writes (`.meshop/scrape-token`, which its jobs read); the copy's folder."""
    folder = root / "deploy" / "prometheus"
    shutil.copytree(PROMETHEUS, folder)
    shutil.copy(folder / "targets" / "meshop.json.example", folder / "targets" / "meshop.json")
    scrape_token.create(root / ".meshop" / scrape_token.FILENAME)
    return folder


def test_the_scrape_config_and_its_target_file_are_valid(promtool: str, tmp_path: Path) -> None:
    checked = run(promtool, "check", "config", str(checkout(tmp_path) / "prometheus.yml"))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "WARNING" not in checked.stdout + checked.stderr


def test_every_job_presents_the_scrape_token() -> None:
    """...the one `make up` writes: in its data dir, under the name `meshop up` gives it."""
    written = (ROOT / Settings().data_dir / scrape_token.FILENAME).resolve()
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    for job in config["scrape_configs"]:
        assert (PROMETHEUS / job["authorization"]["credentials_file"]).resolve() == written, job["job_name"]


def test_the_commented_kubernetes_job_is_valid_once_uncommented(promtool: str, tmp_path: Path) -> None:
    folder = checkout(tmp_path)
    token = scrape_token.create(tmp_path / "scrape-token")
    text = (folder / "prometheus.yml").read_text()
    head, marker, job = text.partition("  # - job_name: meshop-pods")
    assert marker, "the Kubernetes job is no longer in prometheus.yml"
    job = "\n".join(line.replace("  # ", "  ", 1) for line in (marker + job).splitlines())
    config = folder / "prometheus.yml"
    config.write_text(head + job.replace("/etc/prometheus/meshop/scrape-token", str(token)) + "\n")
    checked = run(promtool, "check", "config", str(config))
    if "field kubernetes_sd_configs not found" in checked.stdout + checked.stderr:
        # Debian builds Prometheus without Kubernetes discovery: check the rest of the job.
        config.write_text(config.read_text().replace("kubernetes_sd_configs:\n      - role: pod", "static_configs: []"))
        checked = run(promtool, "check", "config", str(config))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_rules_are_valid_and_their_unit_tests_pass(promtool: str) -> None:
    checked = run(promtool, "check", "rules", "rules.yml", cwd=PROMETHEUS)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = run(promtool, "test", "rules", "rules_test.yml", cwd=PROMETHEUS)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_the_dashboard_is_a_grafana_dashboard_on_a_chosen_prometheus() -> None:
    board = dashboard()
    assert board["schemaVersion"] >= 39
    assert board["uid"] == "meshop-overview"
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]


def test_the_dashboard_shows_what_the_issue_asks_for() -> None:
    titles = " | ".join(p["title"] for p in dashboard()["panels"]).lower()
    topics = ["requests/s", "5xx", "duration", "in flight", "little's law", "efficiency e", "circuit breakers"]
    topics += ["retry budget", "sagas by state", "outbox backlog", "relay lag", "consumer lag", "cpu", "memory"]
    assert [topic for topic in topics if topic not in titles] == []


def test_every_dashboard_query_is_valid_promql(promtool: str, tmp_path: Path) -> None:
    """promtool parses each query as a recording rule, Grafana's variables given values."""
    concrete = [q.replace("$__rate_interval", "1m").replace("$service", ".*") for q in dashboard_queries()]
    recorded = [{"record": f"dashboard:query:{i}", "expr": q} for i, q in enumerate(concrete)]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": recorded}]}))
    checked = run(promtool, "check", "rules", str(path))
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.parametrize("where", ["rules", "dashboard"])
def test_every_metric_queried_is_one_meshop_exports(where: str) -> None:
    exprs = [r["expr"] for r in rules()] if where == "rules" else dashboard_queries()
    recorded = {r["record"] for r in rules() if "record" in r}
    known = exported_names() | recorded | SYNTHETIC
    unknown = {name: expr for expr in exprs for name in referenced_names(expr) if name not in known}
    assert unknown == {}


def test_the_check_catches_a_metric_nobody_exports() -> None:
    expr = 'sum by (service) (rate(meshop_cache_hits_total{route="x"}[5m])) / on (service) meshop_http_requests_total'
    assert referenced_names(expr) == {"meshop_cache_hits_total", "meshop_http_requests_total"}
    assert "meshop_cache_hits_total" not in exported_names()
    assert {"meshop_http_requests_total", "process_cpu_seconds_total", "meshop_sagas"} <= exported_names()
