"""Sessions through the gateway: refresh-token rotation and reuse, logout, key rotation
without a single refused request."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator

import aiohttp
import jwt
import pytest

from tests.e2e.api import Api
from tests.e2e.conftest import Shop, start_shop

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

ADMIN_PASSWORD = "sessions-admin-secret"


@pytest.fixture(scope="module")
def sessions_shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shop]:
    env = {"MESHOP_ADMIN_PASSWORD": ADMIN_PASSWORD, "MESHOP_JWKS_REFRESH_S": "1", "MESHOP_USERS_KEY_ACTIVATION_S": "3"}
    running = start_shop(tmp_path_factory.mktemp("sessions"), env=env)
    yield running
    running.stop()


@pytest.fixture
async def api(sessions_shop: Shop) -> AsyncIterator[Api]:
    async with aiohttp.ClientSession() as session:
        yield Api(session, sessions_shop.url)


async def login(api: Api, email: str) -> dict[str, str]:
    status, token, _ = await api.request("POST", "/users/login", {"email": email, "password": "correct horse"})
    assert status == 200
    return token


async def register(api: Api) -> str:
    email = f"s{time.time_ns()}@example.com"
    status, _, _ = await api.request(
        "POST", "/users/register", {"email": email, "password": "correct horse", "name": "S"}
    )
    assert status == 201
    return email


async def test_a_refresh_token_works_once_and_its_reuse_ends_the_session(api: Api) -> None:
    first = await login(api, await register(api))
    assert first["refresh_token"].startswith("rt_")
    status, second, _ = await api.request("POST", "/users/refresh", {"refresh_token": first["refresh_token"]})
    assert status == 200
    assert second["refresh_token"] != first["refresh_token"]
    status, _, _ = await api.request("GET", "/users/me", headers={"authorization": f"Bearer {second['access_token']}"})
    assert status == 200
    status, problem, content_type = await api.request(
        "POST", "/users/refresh", {"refresh_token": first["refresh_token"]}
    )
    assert status == 401
    assert content_type == "application/problem+json"
    assert "reused" in problem["detail"]
    status, _, _ = await api.request("POST", "/users/refresh", {"refresh_token": second["refresh_token"]})
    assert status == 401  # the thief and the owner are both logged out of that session


async def test_logout_denies_the_access_token_everywhere_until_it_expires(api: Api) -> None:
    token = await login(api, await register(api))
    bearer = {"authorization": f"Bearer {token['access_token']}"}
    assert (await api.request("GET", "/orders", headers=bearer))[0] == 200  # verified (and cached) by orders too
    status, _, _ = await api.request("POST", "/users/logout", {"refresh_token": token["refresh_token"]}, headers=bearer)
    assert status == 204
    for path in ("/users/me", "/orders"):  # the gateway and every service deny it
        deadline = time.monotonic() + 3
        while (status := (await api.request("GET", path, headers=bearer))[0]) != 401:
            assert time.monotonic() < deadline, f"{path} still answers {status} after logout"
            await asyncio.sleep(0.05)
    status, _, _ = await api.request("POST", "/users/refresh", {"refresh_token": token["refresh_token"]})
    assert status == 401


async def test_keys_rotate_with_no_refused_request(api: Api, sessions_shop: Shop) -> None:
    email = await register(api)
    old = await login(api, email)
    old_kid = jwt.get_unverified_header(old["access_token"])["kid"]
    rotated = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "meshop", "keys", "rotate", "--data-dir", str(sessions_shop.data_dir)],
        capture_output=True,
        text=True,
        timeout=30,
        env={"MESHOP_ADMIN_PASSWORD": ADMIN_PASSWORD, "PATH": "/usr/bin:/bin"},
        check=True,
    )
    rotation = json.loads(rotated.stdout)
    assert rotation["kid"] != old_kid
    assert set(rotation["published_kids"]) == {rotation["kid"], old_kid}
    refused: list[tuple[str, int]] = []
    kids_seen = set()
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline:
        fresh = await login(api, email)
        kids_seen.add(jwt.get_unverified_header(fresh["access_token"])["kid"])
        for token in (old, fresh):
            for path in ("/users/me", "/orders"):
                status = (await api.request("GET", path, headers={"authorization": f"Bearer {token['access_token']}"}))[
                    0
                ]
                if status != 200:
                    refused.append((path, status))
        if rotation["kid"] in kids_seen:
            break
        await asyncio.sleep(0.2)
    assert refused == []
    assert rotation["kid"] in kids_seen  # new logins are signed with the new key
