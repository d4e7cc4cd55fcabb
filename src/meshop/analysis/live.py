"""The seeds' math from a running shop's own metrics (`meshop analyze ... --live`).

- efficiency: each caller's balancer E per target (seed 001's formula over the requests it
  sent to each instance), as its `/metrics` reports it;
- Little's law per service: λ (requests/s) and W (mean time in service) measured over a
  window, L = λW, next to L observed by sampling the in-flight gauge;
- serial reliability of checkout: orders' observed success rate of each step's calls
  (inventory, payments, shipping), R = Π R(step). A 4xx is the participant answering
  (a decline, no stock): a success of the call; 5xx, transport errors and local
  rejections are failures.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from meshop.analysis import serial_reliability
from meshop.analysis.samples import IN_FLIGHT, REQUESTS_COUNT, REQUESTS_SECONDS, Samples, parse, totals
from meshop.mesh.security import scrape_token
from meshop.runtime.connection import gateway_url_of
from meshop.runtime.inspect import instances_via_gateway, instances_via_nats

__all__ = ["Samples", "checkout_reliability", "efficiencies", "littles_law", "parse", "scrape", "scrape_window"]

CHECKOUT_STEPS = ("inventory", "payments", "shipping")


async def scrape(data_dir: Path, url: str | None = None) -> dict[tuple[str, str], Samples]:
    """(service, instance id) → the samples of its /metrics, for every registered process.

    The processes are found in the registry of the shop in `data_dir`, or through the
    gateway at `url` when it is given.
    """
    gateway: str | None
    if url is not None:
        found, gateway = await instances_via_gateway(url), url.rstrip("/")
    else:
        found = await instances_via_nats(data_dir)
        gateway = gateway_url_of(data_dir)
    targets = {(i["service"], i["instance_id"]): f"http://{i['address']}/metrics" for i in found}
    if gateway and not any(service == "gateway" for service, _ in targets):
        targets[("gateway", "gateway")] = gateway + "/metrics"
    out: dict[tuple[str, str], Samples] = {}
    # The shop's scrape token where `meshop up` wrote it: loopback may be refused too
    # (MESHOP_METRICS_LOOPBACK=false), and the instances may be on other hosts.
    token = data_dir / scrape_token.FILENAME
    headers = {"authorization": f"Bearer {scrape_token.load(token).decode()}"} if token.exists() else {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:

        async def one(key: tuple[str, str], url: str) -> None:
            async with session.get(url, headers=headers, ssl=False) as resp:
                if resp.status == 200:
                    out[key] = parse(await resp.text())

        await asyncio.gather(*(one(k, u) for k, u in targets.items()), return_exceptions=True)
    return out


async def scrape_window(
    data_dir: Path, window_s: float, url: str | None = None, *, measuring: Callable[[int], None] | None = None
) -> tuple[dict[tuple[str, str], Samples], dict[tuple[str, str], Samples], float]:
    """Two scrapes `window_s` apart, and the seconds between them (for rates from counter deltas).

    `measuring` is told how many processes answered the first scrape, as the window begins.
    """
    before = time.monotonic()
    first = await scrape(data_dir, url)
    started = (before + time.monotonic()) / 2  # each scrape's processes answer at some point within it
    if measuring is not None:
        measuring(len(first))
    await asyncio.sleep(window_s)
    before = time.monotonic()
    last = await scrape(data_dir, url)
    return first, last, (before + time.monotonic()) / 2 - started


@dataclass
class EfficiencyRow:
    caller: str
    target: str
    efficiency: float
    sent: dict[str, float]


def efficiencies(scraped: dict[tuple[str, str], Samples]) -> list[EfficiencyRow]:
    rows = []
    for (service, instance), samples in sorted(scraped.items()):
        sent: dict[str, dict[str, float]] = defaultdict(dict)
        for name, labels, value in samples:
            if name == "meshop_balancer_picks":
                sent[labels["target"]][labels["instance"]] = value
        for name, labels, value in samples:
            if name == "meshop_balancer_efficiency" and labels.get("window") == "total":
                target = labels["target"]
                rows.append(EfficiencyRow(f"{service}/{instance}", target, value, sent.get(target, {})))
    return rows


@dataclass
class LittleRow:
    service: str
    arrival_rate: float
    time_in_system_s: float
    predicted_l: float
    observed_l: float


def _server_totals(samples: Samples) -> tuple[float, ...]:
    """Requests served, their summed time in service, and requests in flight."""
    return totals(samples, REQUESTS_COUNT, REQUESTS_SECONDS, IN_FLIGHT)


async def littles_law(data_dir: Path, window_s: float = 5.0, sample_every_s: float = 0.25) -> list[LittleRow]:
    """Per service: λ and W over `window_s`, L = λW, and the mean of in-flight samples."""
    first = await scrape(data_dir)
    started = time.monotonic()
    in_flight: dict[str, list[float]] = defaultdict(list)
    last = first
    while time.monotonic() - started < window_s:
        await asyncio.sleep(sample_every_s)
        last = await scrape(data_dir)
        for (service, _), samples in last.items():
            in_flight[service].append(_server_totals(samples)[2])
    elapsed = time.monotonic() - started
    per_service: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for key, samples in last.items():
        if key not in first:
            continue
        c1, s1, _ = _server_totals(samples)
        c0, s0, _ = _server_totals(first[key])
        per_service[key[0]][0] += c1 - c0
        per_service[key[0]][1] += s1 - s0
    rows = []
    for service, (count, seconds) in sorted(per_service.items()):
        rate = count / elapsed
        w = seconds / count if count else 0.0
        samples_seen = in_flight.get(service, [])
        # (the gauge counts API requests only: the scrape of /metrics is not in it)
        observed = sum(samples_seen) / len(samples_seen) if samples_seen else 0.0
        rows.append(LittleRow(service, rate, w, rate * w, observed))
    return rows


@dataclass
class ReliabilityRow:
    step: str
    calls: float
    succeeded: float

    @property
    def reliability(self) -> float:
        return self.succeeded / self.calls if self.calls else 1.0


def checkout_reliability(scraped: dict[tuple[str, str], Samples]) -> tuple[list[ReliabilityRow], float]:
    calls: dict[str, float] = defaultdict(float)
    ok: dict[str, float] = defaultdict(float)
    for (service, _), samples in scraped.items():
        if service != "orders":
            continue
        for name, labels, value in samples:
            if name == "meshop_client_calls_total" and labels.get("target") in CHECKOUT_STEPS:
                calls[labels["target"]] += value
                if labels.get("outcome") in ("2xx", "4xx"):
                    ok[labels["target"]] += value
    rows = [ReliabilityRow(step, calls[step], ok[step]) for step in CHECKOUT_STEPS]
    product = serial_reliability([r.reliability for r in rows]) if rows else math.nan
    return rows, product
