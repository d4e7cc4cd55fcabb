"""The payments service: its settings, adapters and definition, and `build`, which wires
its handlers to its API."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import msgspec
from starlette.routing import Route

from meshop.contracts import payments as contract
from meshop.contracts.users import remote_verifier
from meshop.mesh import Api, Runtime, ServiceDefinition, Settings, from_env
from meshop.services.payments.handlers import Payments
from meshop.services.payments.providers import PaymentProvider, SimulatedProvider


class PaymentsSettings(msgspec.Struct, frozen=True, kw_only=True):
    """`MESHOP_PAYMENTS_*`: the simulated provider's latency and failure rate."""

    simulated_latency_ms: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    simulated_failure_rate: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.0


@dataclass(frozen=True, kw_only=True)
class Adapters:
    """What payments talks to outside the mesh."""

    provider: PaymentProvider


def adapters(_settings: Settings) -> Adapters:
    """The simulated provider, as `MESHOP_PAYMENTS_*` configures it (the only provider so far)."""
    settings = from_env(PaymentsSettings, "MESHOP_PAYMENTS_")
    provider = SimulatedProvider(
        latency_s=settings.simulated_latency_ms / 1000, failure_rate=settings.simulated_failure_rate
    )
    return Adapters(provider=provider)


async def build(runtime: Runtime) -> Api:
    payments = Payments(db=runtime.database, provider=runtime.adapter(Adapters).provider)
    api = Api("payments", max_body_bytes=runtime.settings.max_body_bytes)
    api.implement(contract.TOKENIZE)(payments.tokenize)
    api.implement(contract.AUTHORIZE)(payments.authorize)
    api.implement(contract.CAPTURE)(payments.capture)
    api.implement(contract.VOID)(payments.void)
    api.implement(contract.REFUND)(payments.refund)
    api.implement(contract.VOID_BY_KEY)(payments.void_by_key)
    api.implement(contract.ADMIN_PAYMENTS)(payments.admin_payments)
    if runtime.settings.chaos:
        api.extra_routes.append(Route("/_meshop/provider", payments.set_provider_faults, methods=["PUT"]))
    return api


DEFINITION = ServiceDefinition(
    name="payments",
    build=build,
    contract=contract,
    migrations=Path(__file__).parent / "migrations",
    verifier=remote_verifier,
    outbox=True,
    adapters=adapters,
)
