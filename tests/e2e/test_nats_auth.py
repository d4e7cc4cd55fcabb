"""NATS is closed: against a live shop, nobody connects anonymously, and a service's own
credentials reach only the subjects it serves, calls and uses.

The shop's NATS also requires TLS (`meshop certs dev` certificates): every process, the
CLI and these tests verify it with the CA of MESHOP_NATS_TLS_CA_FILE.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import nats
import nats.errors
import pytest
from nats.aio.client import Client as NatsClient

from meshop.contracts import catalog, payments
from meshop.mesh.headers import IDENTITY_HEADER, PATH_HEADER
from meshop.mesh.security.identity import CredentialFiles
from meshop.mesh.testing import eventually
from meshop.mesh.transport.nats import answer_of
from meshop.runtime.certs import create_dev_certificates
from meshop.runtime.connection import login_of, nats_url_of
from meshop.runtime.nats_users import credentials_file
from tests.e2e.api import Api, order_body
from tests.e2e.conftest import Shop, start_shop

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shop]:
    certs = create_dev_certificates(tmp_path_factory.mktemp("certs"))
    tls = {
        "MESHOP_NATS_TLS_CERT_FILE": str(certs["cert"]),
        "MESHOP_NATS_TLS_KEY_FILE": str(certs["key"]),
        "MESHOP_NATS_TLS_CA_FILE": str(certs["ca"]),
    }
    with pytest.MonkeyPatch.context() as patch:  # for the CLI commands and `login_of` here
        patch.setenv("MESHOP_NATS_TLS_CA_FILE", tls["MESHOP_NATS_TLS_CA_FILE"])
        running = start_shop(tmp_path_factory.mktemp("shop"), env=tls)
        yield running
        running.stop()


class Connection:
    """A NATS connection as one of the shop's users, keeping the errors the server sends it."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.nc: NatsClient | None = None

    async def error(self, exc: Exception) -> None:
        self.errors.append(str(exc).lower())

    def violations(self) -> list[str]:
        return [e for e in self.errors if "permissions violation" in e]


@pytest.fixture
async def as_inventory(shop: Shop) -> AsyncIterator[Connection]:
    conn = Connection()
    conn.nc = await nats.connect(
        nats_url_of(shop.data_dir), error_cb=conn.error, **login_of(shop.data_dir, "inventory").options()
    )
    yield conn
    await conn.nc.close()


async def refused_subscription(conn: Connection, subject: str) -> list[str]:
    """Subscribe to `subject`; the violations the server answered with (and what arrived meanwhile)."""
    assert conn.nc is not None
    arrived: list[str] = []

    async def keep(msg: Any) -> None:
        arrived.append(msg.subject)

    await conn.nc.subscribe(subject, cb=keep)
    await conn.nc.flush()
    await eventually(conn.violations, within_s=5)  # the -ERR follows the PONG
    assert arrived == []
    return conn.violations()


async def refused_connection(shop: Shop, **options: Any) -> None:
    """Connect with `options`: the server must refuse."""
    nc = NatsClient()
    try:
        with pytest.raises(nats.errors.Error, match="Authorization Violation"):
            await nc.connect(
                nats_url_of(shop.data_dir),
                allow_reconnect=False,
                max_reconnect_attempts=1,
                connect_timeout=2,
                **login_of(shop.data_dir, "nobody").options(),  # TLS only: the CA, no credentials
                **options,
            )
    finally:
        await nc.close()  # nats-py leaves a refused connection's socket open


async def test_an_anonymous_client_cannot_connect(shop: Shop) -> None:
    await refused_connection(shop)


async def test_a_wrong_password_cannot_connect(shop: Shop) -> None:
    await refused_connection(shop, user="payments", password="guessed")


async def test_a_service_cannot_subscribe_to_everything(as_inventory: Connection) -> None:
    assert await refused_subscription(as_inventory, ">") == ['nats: permissions violation for subscription to ">"']


async def test_a_service_cannot_read_another_services_replies(as_inventory: Connection) -> None:
    assert await refused_subscription(as_inventory, "_INBOX_orders.>") == [
        'nats: permissions violation for subscription to "_inbox_orders.>"'
    ]


async def test_a_service_cannot_read_another_services_requests(as_inventory: Connection) -> None:
    assert await refused_subscription(as_inventory, "meshop.rpc.payments.>") == [
        'nats: permissions violation for subscription to "meshop.rpc.payments.>"'
    ]


async def test_a_service_can_call_what_it_calls_and_nothing_else(shop: Shop, as_inventory: Connection) -> None:
    assert as_inventory.nc is not None
    identity = CredentialFiles(shop.data_dir / "identity", "inventory").minter.header("catalog")
    headers = {IDENTITY_HEADER: identity}
    answer = await as_inventory.nc.request(catalog.LOOKUP.subject, b'{"skus": ["HOM-001"]}', timeout=5, headers=headers)
    assert answer_of(answer)[0] == 200  # inventory calls catalog.lookup

    capture = {PATH_HEADER: payments.CAPTURE.render_path({"id": "p1"})}
    with pytest.raises(nats.errors.TimeoutError):  # the request never reaches payments
        await as_inventory.nc.request(payments.CAPTURE.subject, b"", timeout=1, headers=capture)
    assert as_inventory.violations() == [f'nats: permissions violation for publish to "{payments.CAPTURE.subject}"']


async def test_a_service_cannot_write_another_services_registry_key(shop: Shop, as_inventory: Connection) -> None:
    assert as_inventory.nc is not None
    registry = await as_inventory.nc.jetstream().key_value("meshop_registry")
    real = [key for key in await registry.keys() if key.startswith("payments.")]  # it reads them all
    assert real
    fake = {"service": "payments", "instance_id": "evil", "address": "127.0.0.1", "port": 1, "pid": 1}
    with pytest.raises(nats.errors.TimeoutError):  # JetStream never sees the write
        await registry.put("payments.evil", json.dumps(fake).encode())
    assert as_inventory.violations() == [
        'nats: permissions violation for publish to "$kv.meshop_registry.payments.evil"'
    ]
    assert "payments.evil" not in await registry.keys()


async def test_a_cli_user_reads_only_what_its_command_needs(shop: Shop) -> None:
    conn = Connection()
    conn.nc = await nats.connect(
        nats_url_of(shop.data_dir), error_cb=conn.error, **login_of(shop.data_dir, "status").options()
    )
    try:
        assert await refused_subscription(conn, "meshop.telemetry.spans") == [
            'nats: permissions violation for subscription to "meshop.telemetry.spans"'
        ]
        with pytest.raises(nats.errors.TimeoutError):
            await conn.nc.jetstream().stream_info("MESHOP_EVENTS_ORDERS")
    finally:
        await conn.nc.close()


def test_the_shops_nats_requires_tls(shop: Shop) -> None:
    assert "TLS required for client connections" in (shop.data_dir / "nats-server.log").read_text()


def test_every_credentials_file_is_private(shop: Shop) -> None:
    for user in ("orders", "gateway", "status", "events"):
        assert credentials_file(shop.data_dir, user).stat().st_mode & 0o777 == 0o600
    assert (shop.data_dir / "nats-server.conf").stat().st_mode & 0o777 == 0o600


async def test_a_checkout_completes_and_the_cli_still_reads_the_shop(shop: Shop) -> None:
    async with aiohttp.ClientSession() as session:
        api = Api(session, shop.url)
        await api.signup()
        status, accepted, _ = await api.request(
            "POST", "/orders", order_body(), headers={"idempotency-key": uuid.uuid4().hex}
        )
        assert status == 202
        assert (await api.settled(accepted["id"]))["status"] == "CONFIRMED"
    assert {row["service"] for row in shop.status()} >= {"orders", "payments", "gateway", "console"}

    def tail() -> list[dict[str, Any]]:
        done = subprocess.run(
            [sys.executable, "-m", "meshop", "events", "tail", "--count", "50", "--data-dir", str(shop.data_dir)],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return [json.loads(line) for line in done.stdout.splitlines()]

    for _ in range(50):  # the outbox relays publish within a sweep
        types = {event["type"] for event in tail()}
        if "OrderConfirmed" in types:
            break
        await asyncio.sleep(0.2)
    assert {"OrderPlaced", "PaymentCaptured", "OrderConfirmed"} <= types
