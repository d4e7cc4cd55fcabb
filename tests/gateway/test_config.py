"""The gateway's routes file: validation with clear errors, matching, and hot reload."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
import structlog

from meshop.gateway import config
from meshop.gateway.config import RouteRules
from meshop.mesh.api.operation import Access
from meshop.mesh.errors import ConfigError
from meshop.mesh.testing import eventually

GOOD = """
[limits]
per_ip = "10/s burst 20"
per_user = "off"

[[routes]]
prefix = "/api/catalog"
service = "catalog"
methods = ["GET"]
cache_ttl_s = 2
rate_limit = "5/s"

[[routes]]
prefix = "/api/shop/admin-orders"
service = "orders"
auth = "admin"
timeout_s = 3
retry = "never"
"""


def test_without_a_file_every_service_is_routed_under_its_name() -> None:
    rules = config.default_rules()
    assert {r.prefix for r in rules.rules} == {
        f"/api/{s}" for s in ("users", "catalog", "inventory", "orders", "payments", "shipping", "console")
    }
    assert rules.per_ip is not None
    assert rules.per_user is not None
    match = rules.match("/api/orders/123", "GET")
    assert match is not None
    assert (match[0].service, match[1]) == ("orders", "/123")


def test_a_file_sets_prefixes_methods_auth_limits_and_cache() -> None:
    rules = config.parse(GOOD, source="routes.toml")
    assert rules.per_ip is not None
    assert rules.per_ip.rate == 10
    assert rules.per_ip.burst == 20
    assert rules.per_user is None
    catalog, admin = rules.rules
    assert (catalog.cache_ttl_s, str(catalog.rate_limit), catalog.retry) == (2, "5/s burst 5", True)
    assert (admin.access, admin.timeout_s, admin.retry) == (Access.ADMIN, 3, False)
    assert rules.match("/api/catalog/products", "POST") is None  # GET only
    assert rules.match("/api/catalogue", "GET") is None  # prefixes match whole segments
    found = rules.match("/api/shop/admin-orders/admin/orders", "GET")
    assert found is not None
    assert found[1] == "/admin/orders"


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("[[routes]]\nprefix = '/api/x'\nservice = 'nope'", "unknown service 'nope'"),
        ("[[routes]]\nprefix = 'no-slash'\nservice = 'users'", "prefix"),
        ("[[routes]]\nprefix = '/api/u'\nservice = 'users'\nrate_limit = 'fast'", "bad rate limit 'fast'"),
        ("[[routes]]\nprefix = '/api/u'\nservice = 'users'\nmethods = ['BREW']", "methods must be"),
        ("[[routes]]\nprefix = '/api/u'\nservice = 'users'\nauth = 'root'", "auth"),
        ("[[routes]]\nprefix = '/api/u'\nservice = 'users'\ncolour = 'red'", "colour"),
        ("[[routes]]\nprefix = '/api/u'\nservice = 'users'\n[[routes]]\nprefix = '/api/u'\nservice = 'users'", "twice"),
        ("[limits]\nper_ip = '1/y'", "limits.per_ip"),
        ("this is not toml", "routes.toml"),
    ],
)
def test_a_bad_file_is_rejected_with_what_is_wrong(text: str, complaint: str) -> None:
    with pytest.raises(ConfigError, match=r"routes\.toml") as error:
        config.parse(text, source="routes.toml")
    assert complaint in str(error.value)


async def test_changes_are_applied_and_a_bad_edit_keeps_the_previous_routes(tmp_path: Path) -> None:
    path = tmp_path / "routes.toml"
    path.write_text(GOOD)
    applied: list[RouteRules] = []
    with structlog.testing.capture_logs() as logs:
        watcher = asyncio.create_task(config.watch(path, applied.append, interval_s=0.02))
        await asyncio.sleep(0)  # its first step reads the file's signature, before it first waits
        try:
            path.write_text(GOOD.replace('"5/s"', '"50/s"'))
            await eventually(lambda: len(applied) == 1, within_s=5)
            assert str(applied[0].rules[0].rate_limit) == "50/s burst 50"
            path.write_text(GOOD + "\n[[routes]]\nbroken = true\n")  # rejected: nothing applied
            await eventually(lambda: any(e["event"].startswith("routes file rejected") for e in logs), within_s=5)
            assert len(applied) == 1
            path.write_text(GOOD)  # fixed again: applied
            await eventually(lambda: len(applied) == 2, within_s=5)
        finally:
            watcher.cancel()


async def test_an_edit_of_the_same_size_within_one_clock_tick_is_applied(tmp_path: Path) -> None:
    path = tmp_path / "routes.toml"
    path.write_text(GOOD)
    before = path.stat()
    applied: list[RouteRules] = []
    watcher = asyncio.create_task(config.watch(path, applied.append, interval_s=0.02))
    await asyncio.sleep(0)  # its first step reads the file's signature, before it first waits
    try:
        path.write_text(GOOD.replace('"5/s"', '"7/s"'))  # the same size...
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # ...and the same mtime
        assert path.stat().st_size == before.st_size
        await eventually(lambda: len(applied) == 1, within_s=5)
        assert str(applied[0].rules[0].rate_limit) == "7/s burst 7"
    finally:
        watcher.cancel()
