"""The carrier adapter (`Carrier`) and the simulated carrier behind it.

`Carrier` is what a real carrier's adapter implements. `SimulatedCarrier` is a
simulation and is named so: it serves a fixed list of countries, prices by weightless
item count, and refuses other destinations the way a carrier API does.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Protocol

from meshop.contracts.shipping import Address, Parcel
from meshop.mesh import MeshError


class DestinationUnserved(MeshError):
    """The carrier does not deliver to this address."""


@dataclass(frozen=True, slots=True)
class Label:
    tracking_number: str
    carrier: str


class Carrier(Protocol):
    name: str

    def quote(self, address: Address, items: list[Parcel]) -> tuple[int, int]: ...

    async def create(self, address: Address, items: list[Parcel], *, key: str) -> Label: ...

    async def cancel(self, tracking_number: str, *, key: str) -> None: ...


class SimulatedCarrier:
    """A simulated carrier (no parcel moves)."""

    name = "simulated-post"
    COUNTRIES = frozenset(
        {
            "US",
            "CA",
            "GB",
            "IE",
            "DE",
            "FR",
            "NL",
            "BE",
            "ES",
            "IT",
            "SE",
            "DK",
            "NO",
            "FI",
            "PL",
            "AT",
            "CH",
            "AU",
            "NZ",
            "JP",
        }
    )

    def quote(self, address: Address, items: list[Parcel]) -> tuple[int, int]:
        """(price_cents, eta_days) — shipping is included in prices, so this is informative."""
        self._check(address)
        return 0, 2 if address.country == "US" else 5

    def _check(self, address: Address) -> None:
        if address.country not in self.COUNTRIES:
            raise DestinationUnserved(f"{self.name} does not deliver to {address.country}")

    async def create(self, address: Address, items: list[Parcel], *, key: str) -> Label:
        self._check(address)
        digits = int(hashlib.sha256(key.encode()).hexdigest()[:15], 16) % 10**12
        return Label(tracking_number=f"SIM{digits:012d}", carrier=self.name)

    async def cancel(self, tracking_number: str, *, key: str) -> None:
        return None
