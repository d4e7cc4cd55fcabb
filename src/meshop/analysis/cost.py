"""Seed 002's cost model: calling a function directly against calling it through an API gateway.

Reproduced as the seed computes it, with where it is loose made explicit:
- compute is 50 M × 0.3 s × 0.125 GB = 1,875,000 GB-s × $0.0000166667 = $31.25 (the seed
  prints $31.26);
- its "143 GB" of transfer is 150 M KB = 143.05 GiB (binary units, labelled GB);
- its gateway figure ($187.9) prices the gateway alone: the function behind the gateway
  still runs and is billed, so the full cost of that path is gateway + function.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from meshop.mesh.errors import ConfigError


@dataclass(frozen=True)
class Prices:
    region: str
    lambda_per_million_requests: float
    lambda_per_gb_second: float
    api_gateway_per_million_requests: float
    data_transfer_per_gb: float

    @classmethod
    def load(cls, path: Path | None = None) -> Prices:
        try:
            text = path.read_text() if path else (resources.files("meshop.analysis") / "prices.toml").read_text()
            data = tomllib.loads(text)
            return cls(**data)
        except (OSError, tomllib.TOMLDecodeError, TypeError) as exc:
            raise ConfigError(f"cannot read prices from {path or 'the built-in file'}: {exc}") from None


@dataclass(frozen=True)
class Workload:
    requests_per_month: float = 50e6
    memory_mb: float = 128
    duration_ms: float = 300
    payload_kb: float = 3

    def __post_init__(self) -> None:
        if min(self.requests_per_month, self.memory_mb, self.duration_ms, self.payload_kb) < 0:
            raise ValueError("requests, memory, duration and payload cannot be negative")


@dataclass(frozen=True)
class Estimate:
    direct_requests: float
    direct_compute: float
    gb_seconds: float
    gateway_requests: float
    transfer_gib: float
    gateway_transfer: float

    @property
    def direct_total(self) -> float:
        return self.direct_requests + self.direct_compute

    @property
    def gateway_total(self) -> float:
        """The gateway alone, as seed 002 prices it."""
        return self.gateway_requests + self.gateway_transfer

    @property
    def gateway_with_function(self) -> float:
        """What the gateway path really costs: the gateway and the function it invokes."""
        return self.gateway_total + self.direct_total


def estimate(workload: Workload, prices: Prices) -> Estimate:
    millions = workload.requests_per_month / 1e6
    gb_seconds = workload.requests_per_month * (workload.duration_ms / 1000) * (workload.memory_mb / 1024)
    transfer_gib = workload.requests_per_month * workload.payload_kb / 1024 / 1024  # KB → GiB
    return Estimate(
        direct_requests=millions * prices.lambda_per_million_requests,
        direct_compute=gb_seconds * prices.lambda_per_gb_second,
        gb_seconds=gb_seconds,
        gateway_requests=millions * prices.api_gateway_per_million_requests,
        transfer_gib=transfer_gib,
        gateway_transfer=transfer_gib * prices.data_transfer_per_gb,
    )
