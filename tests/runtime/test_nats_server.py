"""The embedded NATS server with the shop's users and TLS (`meshop certs dev` certificates)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import nats.errors
import pytest
from nats.aio.client import Client as NatsClient

from meshop.mesh.security.nats_auth import NatsLogin
from meshop.runtime.certs import create_dev_certificates
from meshop.runtime.nats_server import EmbeddedNats
from meshop.runtime.nats_users import credentials_file, ensure_users, render_server_config

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def tls_nats(tmp_path: Path) -> AsyncIterator[tuple[str, Path, Path]]:
    """A server admitting the shop's users over TLS only: (url, data dir, CA file)."""
    certs = create_dev_certificates(tmp_path / "certs")
    server = EmbeddedNats(
        tmp_path / "nats",
        authorization=render_server_config(ensure_users(tmp_path)),
        tls=(certs["cert"], certs["key"]),
    )
    url = await server.start()
    assert (tmp_path / "nats-server.conf").stat().st_mode & 0o777 == 0o600
    yield url, tmp_path, certs["ca"]
    await server.stop()


async def refused(url: str, **options: object) -> BaseException:
    nc = NatsClient()
    try:
        with pytest.raises(nats.errors.Error) as caught:
            await nc.connect(url, allow_reconnect=False, max_reconnect_attempts=1, connect_timeout=2, **options)
        return caught.value
    finally:
        await nc.close()  # nats-py leaves a refused connection's socket open


async def test_services_talk_over_tls_with_their_credentials(tls_nats: tuple[str, Path, Path]) -> None:
    url, data_dir, ca = tls_nats
    users = await nats.connect(url, **NatsLogin.load(credentials_file(data_dir, "users"), tls_ca_file=ca).options())
    catalog = await nats.connect(url, **NatsLogin.load(credentials_file(data_dir, "catalog"), tls_ca_file=ca).options())
    try:

        async def answer(msg: nats.aio.msg.Msg) -> None:
            await msg.respond(b"keys")

        await users.subscribe("meshop.rpc.users.jwks", cb=answer)
        await users.flush()
        reply = await catalog.request("meshop.rpc.users.jwks", b"", timeout=5)  # answered to _INBOX_catalog
        assert reply.data == b"keys"
    finally:
        await catalog.close()
        await users.close()


async def test_the_server_requires_tls_and_auth_of_every_client(tls_nats: tuple[str, Path, Path]) -> None:
    url, _data_dir, _ca = tls_nats
    host, port = url.removeprefix("nats://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        info = json.loads((await asyncio.wait_for(reader.readline(), 5)).removeprefix(b"INFO "))
    finally:
        writer.close()
    assert (info["tls_required"], info["auth_required"]) == (True, True)


async def test_tls_without_credentials_is_still_refused(tls_nats: tuple[str, Path, Path]) -> None:
    url, _data_dir, ca = tls_nats
    exc = await refused(url, **NatsLogin(tls_ca_file=ca).options())
    assert "Authorization Violation" in str(exc)
