"""An admin's HTTP client of a running shop, through its gateway (for the CLI and chaos).

It finds the shop from its data dir (`gateway.url`, `admin-password`) unless told the URL
and password, logs in as the admin and reads every page of the cursor-paginated admin APIs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Self
from urllib.parse import quote

import aiohttp

from meshop.mesh.errors import ConfigError
from meshop.mesh.service.settings import setting
from meshop.runtime.connection import NoShopError, gateway_url_of, unreachable

ADMIN_EMAIL = "admin@meshop.local"


def locate(data_dir: Path, url: str | None = None, password: str | None = None) -> tuple[str, str]:
    """The gateway URL and admin password of the shop running on `data_dir`."""
    if url is None:
        url = gateway_url_of(data_dir)
        if url is None:
            raise NoShopError(f"no running shop found in {data_dir} (no gateway.url); is `meshop up` running?")
    password = password or setting("MESHOP_ADMIN_PASSWORD")
    if password is None:
        secret = data_dir / "admin-password"
        if not secret.exists():
            raise ConfigError(f"no admin password: set MESHOP_ADMIN_PASSWORD or keep {secret}")
        password = secret.read_text().strip()
    return url.rstrip("/"), password


class ShopAdmin:
    """`async with ShopAdmin(url, password) as admin: await admin.get("/api/...")`."""

    def __init__(self, url: str, password: str, *, timeout_s: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self._password = password
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None
        self._headers: dict[str, str] = {}

    async def __aenter__(self) -> Self:
        self._session = aiohttp.ClientSession(timeout=self._timeout)
        try:
            token = await self.request("POST", "/api/users/login", {"email": ADMIN_EMAIL, "password": self._password})
        except aiohttp.ClientConnectorError as exc:  # a gateway.url left by a shop that was killed
            await self._session.close()
            raise unreachable(self.url, exc.os_error) from None
        except BaseException:
            await self._session.close()
            raise
        self._headers = {"authorization": f"Bearer {token['access_token']}"}
        return self

    async def __aexit__(self, *_exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    async def request(self, method: str, path: str, body: Any = None) -> Any:
        assert self._session is not None, "use ShopAdmin in `async with`"
        async with self._session.request(method, self.url + path, json=body, headers=self._headers) as resp:
            data = await resp.json(content_type=None)
            if resp.status >= 400:
                detail = data.get("detail") if isinstance(data, dict) else data
                raise ConfigError(f"{method} {path} answered {resp.status}: {detail}")
            return data

    async def get(self, path: str) -> Any:
        return await self.request("GET", path)

    async def pages(self, path: str, *, limit: int = 1000) -> AsyncIterator[dict[str, Any]]:
        """Every item of a cursor-paginated admin list."""
        cursor: str | None = None
        while True:
            query = f"?limit={limit}" + (f"&cursor={quote(cursor)}" if cursor else "")
            page = await self.get(path + query)
            for item in page["items"]:
                yield item
            cursor = page.get("next_cursor")
            if not cursor:
                return

    async def all(self, path: str) -> list[dict[str, Any]]:
        return [item async for item in self.pages(path)]
