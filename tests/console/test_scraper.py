"""The scraper with a fake probe and a fake clock; the HTTP probe against a real server."""

from __future__ import annotations

import aiohttp
from aiohttp import web

from meshop.console.scraper import Scraper, http_probe
from meshop.mesh.registry import Instance
from meshop.mesh.testing import FakeClock

EXPOSITION = """\
# TYPE meshop_http_requests_in_flight gauge
meshop_http_requests_in_flight 2.0
"""


def make(service: str, instance_id: str) -> Instance:
    return Instance(service=service, instance_id=instance_id, address="127.0.0.1", port=1, pid=1)


async def test_a_round_asks_every_registered_instance_and_keeps_what_it_answered() -> None:
    registered = [make("catalog", "a"), make("orders", "b"), make("users", "c")]

    async def probe(instance: Instance) -> tuple[str, str | None]:
        if instance.service == "orders":
            raise ConnectionRefusedError
        if instance.service == "users":
            return "not ready (503)", None
        return "ready", EXPOSITION

    clock = FakeClock(100.0)
    scraper = Scraper(lambda: registered, probe, clock=clock, wall_clock=lambda: 5.0)
    done = await scraper.scrape()
    assert [(s.instance.service, s.health) for s in done.seen] == [
        ("catalog", "ready"),
        ("orders", "unreachable"),
        ("users", "not ready (503)"),
    ]
    assert done.samples() == {("catalog", "a"): [("meshop_http_requests_in_flight", {}, 2.0)]}
    assert (done.at, done.wall) == (100.0, 5.0)


async def test_only_the_last_rounds_are_kept() -> None:
    async def probe(_instance: Instance) -> tuple[str, str | None]:
        return "ready", EXPOSITION

    clock = FakeClock(100.0)
    scraper = Scraper(lambda: [make("catalog", "a")], probe, keep=3, clock=clock)
    for _ in range(5):
        await scraper.scrape()
        clock.now += 2
    assert [r.at for r in scraper.history] == [104.0, 106.0, 108.0]


async def test_a_malformed_exposition_is_seen_without_figures() -> None:
    async def probe(_instance: Instance) -> tuple[str, str | None]:
        return "ready", "this is { not prometheus\n"

    scraper = Scraper(lambda: [make("catalog", "a")], probe, clock=FakeClock(100.0))
    (only,) = (await scraper.scrape()).seen
    assert (only.health, only.samples) == ("ready", None)


async def test_the_http_probe_sends_the_scrape_token_with_metrics_only() -> None:
    seen: dict[str, str | None] = {}

    async def answer(request: web.Request) -> web.Response:
        seen[request.path] = request.headers.get("authorization")
        if request.path == "/metrics" and request.headers.get("authorization") != "Bearer s3cret":
            return web.Response(status=401)
        return web.Response(text=EXPOSITION if request.path == "/metrics" else "{}")

    app = web.Application()
    app.router.add_get("/ready", answer)
    app.router.add_get("/metrics", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        instance = Instance(service="catalog", instance_id="a", address="127.0.0.1", port=port, pid=1)
        async with aiohttp.ClientSession() as session:
            assert await http_probe(session, token=b"s3cret")(instance) == ("ready", EXPOSITION)
            assert seen == {"/ready": None, "/metrics": "Bearer s3cret"}
            assert await http_probe(session)(instance) == ("ready", None)
    finally:
        await runner.cleanup()
