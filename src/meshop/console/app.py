"""The console service: the operations console's JSON API (its page is served by the gateway).

It scrapes every registered instance's `/metrics` and `/ready` on a beat (`scraper.py`),
computes the figures from the last rounds (`figures.py`) and keeps the traces the tail
sampler decides to keep (`traces.py`, fed by the span stream on NATS). Every operation
is for admins (`meshop.contracts.console`).
"""

from __future__ import annotations

import math
import re
from typing import Annotated

import aiohttp
import msgspec

from meshop.console import figures
from meshop.console.sampling import SamplingPolicy
from meshop.console.scraper import Scraper, http_probe
from meshop.console.traces import TraceStore
from meshop.contracts import console as contract
from meshop.contracts.users import remote_verifier
from meshop.mesh.api.routing import Api, RequestContext
from meshop.mesh.errors import NotFound, Unprocessable
from meshop.mesh.registry import Instance
from meshop.mesh.security import scrape_token
from meshop.mesh.service.lifecycle import Runtime, ServiceDefinition
from meshop.mesh.service.settings import Seconds, from_env

_TRACE_ID = re.compile(r"^[0-9a-f]{32}$")


class ConsoleSettings(msgspec.Struct, frozen=True, kw_only=True):
    """`MESHOP_CONSOLE_*`."""

    #: How often every instance is scraped.
    scrape_interval_s: Seconds = 2.0
    #: Rates, latencies and Little's law are over this much of the latest rounds.
    window_s: Seconds = 10.0
    #: Kept traces (the oldest goes first).
    trace_capacity: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 1000
    #: Seconds an instance has to answer a scrape.
    scrape_timeout_s: Seconds = 1.5


def rounds_kept(settings: ConsoleSettings) -> int:
    """The rounds a window spans, its first included, and one more: what the figures read."""
    return math.ceil(settings.window_s / settings.scrape_interval_s) + 2


def _flag(ctx: RequestContext, name: str) -> bool:
    raw = ctx.query_str(name, max_length=5)
    if raw is None or raw in ("false", "0"):
        return False
    if raw in ("true", "1"):
        return True
    raise Unprocessable(f"query parameter {name!r} must be true or false")


async def build(runtime: Runtime) -> Api:
    settings = from_env(ConsoleSettings, "MESHOP_CONSOLE_")
    api = Api("console", max_body_bytes=runtime.settings.max_body_bytes)
    registry = runtime.registry

    def instances() -> list[Instance]:
        return [i for service in registry.view.services() for i in registry.instances(service)]

    session = aiohttp.ClientSession()
    token_file = runtime.settings.metrics_token_file
    token = scrape_token.load(token_file) if token_file else None
    scraper = Scraper(
        instances,
        http_probe(session, timeout_s=settings.scrape_timeout_s, token=token),
        keep=rounds_kept(settings),
        names=figures.READ,
    )
    store = TraceStore(SamplingPolicy.from_env(), capacity=settings.trace_capacity)

    async def collect() -> None:
        """Owns the session and the trace store: both are closed when the service stops."""
        try:
            await store.start(runtime.nc)
            await scraper.run_forever(settings.scrape_interval_s)
        finally:
            await store.stop()
            await session.close()

    runtime.spawn(collect(), name="console-collect")

    @api.implement(contract.OVERVIEW)
    async def overview(_ctx: RequestContext, _body: None) -> contract.Overview:
        return figures.overview(list(scraper.history), window_s=settings.window_s, traces=store.stats())

    @api.implement(contract.TRACES)
    async def traces(ctx: RequestContext, _body: None) -> contract.TracePage:
        found = store.query(
            order_id=ctx.query_str("order_id", max_length=64),
            errors=_flag(ctx, "errors"),
            slow=_flag(ctx, "slow"),
            limit=ctx.query_int("limit", default=50, low=1, high=500),
        )
        return contract.TracePage(items=found)

    @api.implement(contract.TRACE)
    async def trace(ctx: RequestContext, _body: None) -> contract.Trace:
        trace_id = ctx.path_params["trace_id"]
        view = store.get(trace_id) if _TRACE_ID.match(trace_id) else None
        if view is None:
            raise NotFound("no kept trace with this id (dropped by sampling, evicted, or never seen)")
        return view

    return api


DEFINITION = ServiceDefinition(name="console", build=build, verifier=remote_verifier, contract=contract)
