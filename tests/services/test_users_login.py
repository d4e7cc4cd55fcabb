"""The users service's login, served for real (HTTP, NATS, SQLite): the same argon2 work and
answer for known and unknown emails, 429s that reveal nothing, and the client address."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from argon2 import PasswordHasher

from meshop.mesh.service.lifecycle import Service
from meshop.mesh.service.settings import Settings
from meshop.services.users.app import DEFINITION

pytestmark = pytest.mark.integration

PASSWORD = "correct horse battery"
Start = Callable[..., Awaitable[str]]


@pytest.fixture
def argon2_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The name of every argon2 hash and verification the process runs, in order."""
    calls: list[str] = []
    for name in ("hash", "verify"):
        original = getattr(PasswordHasher, name)

        def counted(self: PasswordHasher, *args: Any, _name: str = name, _original: Any = original) -> Any:
            calls.append(_name)
            return _original(self, *args)

        monkeypatch.setattr(PasswordHasher, name, counted)
    return calls


@pytest.fixture
async def start(
    nats_url: str, tmp_path: Path, bucket: str, identity_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Start]:
    """Start a users instance with `MESHOP_USERS_*` settings; its base URL."""
    services: list[Service] = []

    async def started(**users_settings: str) -> str:
        for name, value in users_settings.items():
            monkeypatch.setenv(f"MESHOP_USERS_{name.upper()}", value)
        settings = Settings(
            nats_url=nats_url,
            data_dir=tmp_path,
            registry_bucket=bucket,
            tracing=False,
            admin_password="x" * 12,
            identity_dir=identity_dir,
        )
        service = Service(DEFINITION, settings)
        services.append(service)
        await service.start()
        return f"http://127.0.0.1:{service.port}"

    yield started
    for service in services:
        await service.stop()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


async def login(
    session: aiohttp.ClientSession, url: str, email: str, password: str, headers: dict[str, str] | None = None
) -> tuple[int, str, str | None]:
    """Status, body and Retry-After of one login."""
    async with session.post(url + "/login", json={"email": email, "password": password}, headers=headers) as resp:
        return resp.status, await resp.text(), resp.headers.get("retry-after")


async def register(session: aiohttp.ClientSession, url: str) -> str:
    email = f"ada-{uuid.uuid4().hex[:8]}@example.com"
    async with session.post(url + "/register", json={"email": email, "password": PASSWORD, "name": "Ada"}) as resp:
        assert resp.status == 201, await resp.text()
    return email


async def test_known_and_unknown_emails_cost_one_argon2_verification_and_get_the_same_answer(
    start: Start, session: aiohttp.ClientSession, argon2_calls: list[str]
) -> None:
    url = await start()
    known = await register(session, url)
    await login(session, url, "warm-up@example.com", "wrong password")  # the first makes the dummy hash
    argon2_calls.clear()
    wrong_known = await login(session, url, known, "wrong password")
    assert argon2_calls == ["verify"]
    argon2_calls.clear()
    unknown = await login(session, url, "nobody@example.com", "wrong password")
    assert argon2_calls == ["verify"]
    assert wrong_known == unknown
    assert unknown[0] == 401


async def test_a_limited_account_is_429_even_for_the_right_password_and_looks_like_an_unknown_one(
    start: Start, session: aiohttp.ClientSession, argon2_calls: list[str]
) -> None:
    url = await start(login_first_delay_s="60")
    known = await register(session, url)
    for email in (known, "nobody@example.com"):
        for _ in range(5):
            assert (await login(session, url, email, "wrong password"))[0] == 401
    argon2_calls.clear()
    right = await login(session, url, known, PASSWORD)
    wrong = await login(session, url, known, "wrong password")
    unknown = await login(session, url, "nobody@example.com", "wrong password")
    assert argon2_calls == []  # refused before any password is checked
    assert right[:2] == wrong[:2] == unknown[:2]  # the same answer, whoever the account is
    status, body, _ = right
    assert status == 429
    assert "too many failed logins" in body
    # The same delay too, give or take the second between the two accounts' failures (on a
    # loaded machine the ten failed logins above may straddle a second boundary).
    assert all(58 <= int(answer[2]) <= 60 for answer in (right, wrong, unknown)), (right, wrong, unknown)
    async with session.post(url + "/login", json={"email": known, "password": PASSWORD}) as resp:
        assert resp.headers["content-type"] == "application/problem+json"


async def test_a_direct_caller_is_limited_by_its_socket_address_whatever_it_forwards(
    start: Start, session: aiohttp.ClientSession
) -> None:
    url = await start(login_address_failures="3", trusted_proxies="192.0.2.1")  # not this test
    for n in range(3):
        forged = {"x-forwarded-for": f"198.51.100.{n}"}
        assert (await login(session, url, f"u{n}@example.com", "wrong password", forged))[0] == 401
    status, _, retry_after = await login(
        session, url, "u9@example.com", "wrong password", {"x-forwarded-for": "9.9.9.9"}
    )
    assert (status, retry_after) == (429, "60")


async def test_the_gateways_forwarded_address_is_the_one_limited(start: Start, session: aiohttp.ClientSession) -> None:
    url = await start(login_address_failures="3")  # loopback is trusted by default: the gateway's host
    client = {"x-forwarded-for": "198.51.100.7"}
    for n in range(3):
        assert (await login(session, url, f"u{n}@example.com", "wrong password", client))[0] == 401
    assert (await login(session, url, "u9@example.com", "wrong password", client))[0] == 429
    other = {"x-forwarded-for": "198.51.100.8"}
    assert (await login(session, url, "u9@example.com", "wrong password", other))[0] == 401
