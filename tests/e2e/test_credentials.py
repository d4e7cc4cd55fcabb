"""Credentials at the edge of a running shop: failed logins limited per account and per
client address (through the gateway), and the scrape token that reads /metrics and nothing else.

Each login test's client connects from its own loopback address (127.0.0.0/8 is all this
machine's), so the gateway forwards a different client address for each and one test's
failures do not limit another's. The shop runs with the loopback exemption of /metrics
off, so every scrape here is as one from another host.
"""

from __future__ import annotations

import asyncio
import stat
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import aiohttp
import pytest

from meshop.analysis.live import scrape
from tests.e2e.conftest import Shop, start_shop

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

PASSWORD = "correct horse"
#: The first delay after five failures: long enough that a loaded machine's sixth attempt
#: still comes within it, short enough to wait out.
FIRST_DELAY_S = 3
ENV = {
    "MESHOP_USERS_LOGIN_FIRST_DELAY_S": str(FIRST_DELAY_S),
    "MESHOP_METRICS_LOOPBACK": "false",
    "MESHOP_CONSOLE_SCRAPE_INTERVAL_S": "1",
}
EVERY_PROCESS = {"users", "catalog", "inventory", "orders", "payments", "shipping", "console", "gateway"}


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shop]:
    running = start_shop(tmp_path_factory.mktemp("credentials"), env=ENV)
    yield running
    running.stop()


class Logins:
    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session = session
        self.url = url + "/api/users"

    async def register(self) -> str:
        email = f"{uuid.uuid4().hex[:10]}@example.com"
        body = {"email": email, "password": PASSWORD, "name": "Ada"}
        async with self.session.post(self.url + "/register", json=body) as resp:
            assert resp.status == 201, await resp.text()
        return email

    async def login(self, email: str, password: str) -> tuple[int, str | None, dict[str, Any]]:
        """Status, Retry-After and the problem (or tokens) of one login."""
        async with self.session.post(self.url + "/login", json={"email": email, "password": password}) as resp:
            return resp.status, resp.headers.get("retry-after"), await resp.json(content_type=None)


Client = Callable[[str], AbstractAsyncContextManager[Logins]]


@pytest.fixture
def client(shop: Shop) -> Client:
    """A client of the shop connecting from the loopback address it is given."""

    @asynccontextmanager
    async def connect(address: str) -> AsyncIterator[Logins]:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(address, 0))) as session:
            yield Logins(session, shop.url)

    return connect


async def test_the_sixth_wrong_password_for_an_account_waits_and_a_later_right_one_gets_in(client: Client) -> None:
    async with client("127.0.0.21") as logins:
        email = await logins.register()
        for _ in range(5):
            assert (await logins.login(email, "wrong password"))[0] == 401
        status, retry_after, problem = await logins.login(email, "wrong password")
        assert status == 429
        assert retry_after is not None
        assert 1 <= int(retry_after) <= FIRST_DELAY_S
        assert problem["type"] == "urn:meshop:problem:too-many-requests"
        assert (await logins.login(email, PASSWORD))[0::2] == (429, problem)  # no oracle while limited
        unknown = f"nobody-{uuid.uuid4().hex[:6]}@example.com"  # an unknown account: the same answers
        assert [(await logins.login(unknown, "wrong password"))[0] for _ in range(6)] == [401] * 5 + [429]
        assert (await logins.login(unknown, "wrong password"))[2] == problem
    await asyncio.sleep(int(retry_after))  # the account's limit runs out: time is what is tested
    async with client("127.0.0.22") as logins:  # the limit is the account's, from anywhere
        assert (await logins.login(email, PASSWORD))[0] == 200
        assert (await logins.login(email, "wrong password"))[0] == 401  # the success ended the streak


async def test_one_address_gets_twenty_failed_logins_a_minute(client: Client) -> None:
    async with client("127.0.0.23") as logins:
        email = await logins.register()
        statuses = [(await logins.login(f"guess-{n}@example.com", "wrong password"))[0] for n in range(20)]
        assert statuses == [401] * 20
        status, retry_after, _ = await logins.login("guess-20@example.com", "wrong password")
        assert status == 429
        assert retry_after is not None
        assert 30 <= int(retry_after) <= 60
        assert (await logins.login(email, PASSWORD))[0] == 429  # the address is limited, whoever it names
    async with client("127.0.0.24") as elsewhere:
        assert (await elsewhere.login(email, PASSWORD))[0] == 200


@pytest.fixture
def scrape_token(shop: Shop) -> str:
    """The token `meshop up` wrote in the data dir, readable by its owner only."""
    path = shop.data_dir / "scrape-token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    return path.read_text().strip()


async def metrics_urls(session: aiohttp.ClientSession, shop: Shop) -> dict[str, str]:
    async with session.get(shop.url + "/_meshop/instances") as resp:
        instances = await resp.json()
    return {**{i["service"]: f"http://{i['address']}/metrics" for i in instances}, "gateway": shop.url + "/metrics"}


async def test_every_process_serves_metrics_to_the_scrape_token_only(shop: Shop, scrape_token: str) -> None:
    bearer = {"authorization": f"Bearer {scrape_token}"}
    wrong = {"authorization": f"Bearer {scrape_token[:-1]}{'x' if scrape_token[-1] != 'x' else 'y'}"}
    async with aiohttp.ClientSession() as session:
        urls = await metrics_urls(session, shop)
        assert set(urls) == EVERY_PROCESS
        for service, url in urls.items():
            async with session.get(url) as resp:  # no exemption for this (loopback) client
                assert (resp.status, resp.content_type) == (401, "application/problem+json"), service
            async with session.get(url, headers=wrong) as resp:
                assert resp.status == 401, service
            async with session.get(url, headers=bearer) as resp:
                assert resp.status == 200, service
                assert "meshop_http_requests_total" in await resp.text()


async def test_the_scrape_token_grants_nothing_else(shop: Shop, scrape_token: str) -> None:
    bearer = {"authorization": f"Bearer {scrape_token}"}
    async with aiohttp.ClientSession() as session:
        for method, path in [
            ("GET", "/api/users/me"),
            ("POST", "/api/users/logout"),
            ("GET", f"/api/orders/{uuid.uuid4().hex}"),
            ("GET", "/api/console/overview"),
            ("GET", "/api/users/admin/order-stats"),
            ("POST", "/api/users/admin/keys/rotate"),
        ]:
            async with session.request(method, shop.url + path, headers=bearer, json={}) as resp:
                assert resp.status == 401, (method, path, await resp.text())
        users = (await metrics_urls(session, shop))["users"].removesuffix("/metrics")
        async with session.get(users + "/me", headers=bearer) as resp:  # the service itself, not only the gateway
            assert resp.status == 401


async def test_the_console_scrapes_every_process_with_the_token(shop: Shop) -> None:
    async with aiohttp.ClientSession() as session:
        password = (shop.data_dir / "admin-password").read_text().strip()
        status, _, tokens = await Logins(session, shop.url).login("admin@meshop.local", password)
        assert status == 200
        admin = {"authorization": f"Bearer {tokens['access_token']}"}
        scraped: set[str] = set()
        deadline = time.monotonic() + 15
        while scraped != EVERY_PROCESS and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            async with session.get(shop.url + "/api/console/overview", headers=admin) as resp:
                assert resp.status == 200
                overview = await resp.json()
            scraped = {i["service"] for i in overview["instances"] if i["scraped"]}
        assert scraped == EVERY_PROCESS


async def test_meshop_analyze_live_reads_every_process_with_the_token(shop: Shop) -> None:
    """`meshop analyze … --live` and `meshop plan` read /metrics as Prometheus does."""
    found = await scrape(shop.data_dir)
    assert {service for service, _ in found} == EVERY_PROCESS
