"""Request smuggling against a live shop: every ambiguously framed request is a 400 that
closes the connection, at the gateway and at a service's own port, and neither it nor the
request it carries reaches a service.

The cases are the server's unit tests' (`tests/gateway/framing.py`), sent
over raw sockets; "reaches" is read from the `/metrics` request counters of the gateway and
of the services the requests name, with one well-framed request at the end to show that
the counters do count.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter

import aiohttp
import pytest

from tests.e2e.conftest import Shop
from tests.gateway.framing import ambiguous

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

#: What the shop asks of itself, not counted: every process that verifies tokens re-reads the
#: users service's keys every 30 s (MESHOP_JWKS_REFRESH_S), seven within a few seconds, in a shop that
#: has run that long (this module's shop is shared: it may have).
BACKGROUND = ('route="users.jwks"',)
JSON = {"content-type": "application/json"}


def _failed_login() -> bytes:
    """A login that fails (401), for an account of its own: other tests' failures do not limit it (429)."""
    return b'{"email": "nobody-%s@example.com", "password": "wrong-password"}' % uuid.uuid4().hex.encode()


def _own_address(shop: Shop, service: str) -> str:
    return str(next(r["address"] for r in shop.status() if r["service"] == service))


async def _requests_counted(session: aiohttp.ClientSession, url: str) -> Counter[str]:
    """The requests a process has counted in `/metrics` (`meshop_http_requests_total`), by route, method and
    status, leaving out those the shop makes of itself (BACKGROUND)."""
    async with session.get(url + "/metrics") as resp:
        text = await resp.text()
    counted: Counter[str] = Counter()
    for line in text.splitlines():
        if line.startswith("meshop_http_requests_total{") and not any(b in line for b in BACKGROUND):
            labels, _, value = line.rpartition(" ")
            counted[labels.removeprefix("meshop_http_requests_total")] = int(float(value))
    return counted


async def _send(address: str, request: bytes) -> bytes:
    """One request on its own connection, read until the server closes it."""
    host, port = address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(request)
        return await asyncio.wait_for(reader.read(), 10.0)
    finally:
        writer.close()


def _refused(got: bytes) -> dict[str, object]:
    """`got` is a whole 400 problem that closed the connection."""
    head, _, body = got.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    assert status.startswith("HTTP/1.1 400 ")
    assert (headers["content-type"], headers["connection"]) == ("application/problem+json", "close")
    problem: dict[str, object] = json.loads(body)
    assert problem["status"] == 400
    return problem


async def _refuse_every_case(address: str, target: bytes, smuggled: bytes) -> None:
    for name, request in ambiguous(target, smuggled).items():
        try:
            _refused(await _send(address, request))
        except (AssertionError, ValueError) as exc:
            raise AssertionError(f"{name}: not refused") from exc


async def test_the_gateway_refuses_every_ambiguous_request_and_forwards_none(
    session: aiohttp.ClientSession, shop: Shop
) -> None:
    gateway = shop.url.removeprefix("http://")
    witnesses = {"gateway": shop.url} | {s: f"http://{_own_address(shop, s)}" for s in ("users", "catalog")}
    before = {name: await _requests_counted(session, url) for name, url in witnesses.items()}
    await _refuse_every_case(gateway, b"/api/users/login", b"/api/catalog/products")
    async with session.post(shop.url + "/api/users/login", data=_failed_login(), headers=JSON):
        pass  # well framed: counted by the gateway and by users, and only it
    after = {name: await _requests_counted(session, url) for name, url in witnesses.items()}
    assert {name: after[name] - before[name] for name in witnesses} == {
        "gateway": Counter({'{method="POST",route="/api/users",status="401"}': 1}),
        "users": Counter({'{method="POST",route="users.login",status="401"}': 1}),
        "catalog": Counter(),
    }


async def test_a_service_refuses_every_ambiguous_request_on_its_own_port(
    session: aiohttp.ClientSession, shop: Shop
) -> None:
    users = _own_address(shop, "users")
    before = await _requests_counted(session, f"http://{users}")
    await _refuse_every_case(users, b"/login", b"/login")
    async with session.post(f"http://{users}/login", data=_failed_login(), headers=JSON):
        pass
    moved = await _requests_counted(session, f"http://{users}") - before
    assert moved == Counter({'{method="POST",route="users.login",status="401"}': 1})
