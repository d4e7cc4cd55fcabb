"""Prometheus samples as the analyses read them: parsed from `/metrics` text, and summed by name."""

from __future__ import annotations

from collections.abc import Container, Iterable, Mapping

from prometheus_client.parser import text_string_to_metric_families

#: One scrape of one process: (sample name, labels, value).
Sample = tuple[str, Mapping[str, str], float]
Samples = list[tuple[str, dict[str, str], float]]

REQUESTS_COUNT = "meshop_http_request_duration_seconds_count"
REQUESTS_SECONDS = "meshop_http_request_duration_seconds_sum"
IN_FLIGHT = "meshop_http_requests_in_flight"
CPU_SECONDS = "process_cpu_seconds_total"


def parse(text: str, names: Container[str] | None = None) -> Samples:
    """The samples of an exposition; with `names`, only those named so (the other lines are
    not parsed: comments go too, so every family is read as untyped, its sample names unchanged)."""
    if names is not None:
        text = "\n".join(line for line in text.splitlines() if _name(line) in names)
    return [(s.name, s.labels, s.value) for family in text_string_to_metric_families(text) for s in family.samples]


def _name(line: str) -> str:
    """A sample line's metric name (`name{labels} value` or `name value`)."""
    end = len(line)
    for mark in ("{", " "):
        at = line.find(mark, 0, end)
        if at != -1:
            end = at
    return line[:end]


def totals(samples: Iterable[Sample], *names: str) -> tuple[float, ...]:
    """The sum of each named sample over all its label sets, in the order of `names`."""
    index = {name: i for i, name in enumerate(names)}
    sums = [0.0] * len(names)
    for name, _labels, value in samples:
        i = index.get(name)
        if i is not None:
            sums[i] += value
    return tuple(sums)
