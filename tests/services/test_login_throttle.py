"""Failed logins limited per account and per address, on SQLite and PostgreSQL, with a fake clock."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import meshop.services.users.app as users_app
from meshop.mesh.data.store import Database
from meshop.mesh.errors import ConfigError, TooManyRequests
from meshop.mesh.testing import FakeClock
from meshop.services.users.throttle import Attempt, LoginLimits, LoginThrottle, TrustedProxies

pytestmark = pytest.mark.integration

T0 = 1_800_000_000.0
MIGRATIONS = Path(users_app.__file__).parent / "migrations"
LIMITS = LoginLimits()  # the defaults: 5 failures, 15 minutes, 1 s doubling to 15 minutes, 20 a minute


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
async def throttle(sqlite_url: str, clock: FakeClock) -> AsyncIterator[LoginThrottle]:
    """On SQLite: the rules are the same on both; what PostgreSQL adds (row locks) is tested below."""
    database = Database(sqlite_url, name="users")
    await database.migrate(MIGRATIONS)
    yield LoginThrottle(database, LIMITS, clock=clock)
    await database.close()


async def refused(throttle: LoginThrottle, email: str, address: str = "198.51.100.1") -> int:
    """The Retry-After of a refused attempt (fails the test if it was let through)."""
    with pytest.raises(TooManyRequests) as caught:
        await throttle.admit(email, address)
    assert caught.value.retry_after_s is not None
    return int(caught.value.retry_after_s)


async def fail(throttle: LoginThrottle, email: str, times: int, address: str = "198.51.100.1") -> None:
    for _ in range(times):
        await throttle.admit(email, address)  # counted as failed until it succeeds


def test_the_delay_doubles_from_one_second_to_fifteen_minutes() -> None:
    assert [LIMITS.delay_s(n) for n in range(4, 12)] == [0, 1, 2, 4, 8, 16, 32, 64]
    assert LIMITS.delay_s(14) == 512
    assert LIMITS.delay_s(15) == LIMITS.delay_s(10_000) == 900  # capped, and no overflow


async def test_after_five_failures_each_attempt_waits_a_doubling_delay(
    throttle: LoginThrottle, clock: FakeClock
) -> None:
    await fail(throttle, "ada@example.com", 5)
    assert await refused(throttle, "ada@example.com") == 1
    clock.now += 0.5
    assert await refused(throttle, "ada@example.com") == 1  # rounded up: waiting it out is enough
    clock.now += 0.5
    await fail(throttle, "ada@example.com", 1)  # the 6th, let through after 1 s
    assert await refused(throttle, "ada@example.com") == 2
    for delay in (2, 4, 8, 16, 32, 64, 128, 256, 512, 900, 900):
        assert await refused(throttle, "ada@example.com") == delay
        clock.now += delay - 0.25
        assert await refused(throttle, "ada@example.com") == 1
        clock.now += 0.25
        await fail(throttle, "ada@example.com", 1)
    assert await refused(throttle, "ADA@example.com ") == 900  # the email as it is looked up


async def test_refused_attempts_do_not_lengthen_the_delay(throttle: LoginThrottle, clock: FakeClock) -> None:
    await fail(throttle, "ada@example.com", 5)
    for _ in range(10):
        assert await refused(throttle, "ada@example.com") == 1
    clock.now += 1
    await fail(throttle, "ada@example.com", 1)
    assert await refused(throttle, "ada@example.com") == 2


async def test_a_success_ends_the_streak(throttle: LoginThrottle, clock: FakeClock) -> None:
    await fail(throttle, "ada@example.com", 5)
    clock.now += 1
    await throttle.succeeded(await throttle.admit("ada@example.com", "198.51.100.1"))
    await fail(throttle, "ada@example.com", 5)  # five more before any delay
    assert await refused(throttle, "ada@example.com") == 1


async def test_a_streak_ends_fifteen_minutes_after_its_last_delay(throttle: LoginThrottle, clock: FakeClock) -> None:
    await fail(throttle, "ada@example.com", 4)
    clock.now += 899
    await fail(throttle, "ada@example.com", 1)  # the 5th, within 15 minutes of the 4th
    assert await refused(throttle, "ada@example.com") == 1
    clock.now += 1 + 899  # one second of delay, then 15 minutes less a second
    await fail(throttle, "ada@example.com", 1)  # the streak went on: the 6th
    assert await refused(throttle, "ada@example.com") == 2
    clock.now += 2 + 900  # the delay, then 15 minutes with no failure
    await fail(throttle, "ada@example.com", 5)  # a new streak
    assert await refused(throttle, "ada@example.com") == 1


async def test_accounts_are_limited_apart(throttle: LoginThrottle) -> None:
    await fail(throttle, "ada@example.com", 5, address="198.51.100.1")
    await refused(throttle, "ada@example.com", address="203.0.113.9")  # from anywhere
    await fail(throttle, "grace@example.com", 5, address="198.51.100.1")


async def test_an_address_gets_twenty_failed_logins_a_minute(throttle: LoginThrottle, clock: FakeClock) -> None:
    for n in range(10):
        await throttle.admit(f"user{n}@example.com", "198.51.100.1")
    clock.now += 30
    for n in range(10, 20):
        await throttle.admit(f"user{n}@example.com", "198.51.100.1")
    assert await refused(throttle, "another@example.com") == 30  # until the first ten leave the window
    await throttle.admit("another@example.com", "203.0.113.9")  # another address is not limited
    clock.now += 29.5
    assert await refused(throttle, "another@example.com") == 1
    clock.now += 0.5
    for n in range(10):  # a sliding window: the first ten left, the last ten are still in it
        await throttle.admit(f"later{n}@example.com", "198.51.100.1")
    assert await refused(throttle, "another@example.com") == 30


async def test_successful_logins_do_not_count_against_the_address(throttle: LoginThrottle) -> None:
    for n in range(30):
        await throttle.succeeded(await throttle.admit(f"user{n}@example.com", "198.51.100.1"))
    await fail(throttle, "ada@example.com", 5)


async def test_an_attempt_whose_password_was_never_checked_does_not_count(throttle: LoginThrottle) -> None:
    for _ in range(30):
        await throttle.unchecked(await throttle.admit("ada@example.com", "198.51.100.1"))
    await fail(throttle, "ada@example.com", 5)
    await refused(throttle, "ada@example.com")


async def test_a_burst_of_concurrent_guesses_lets_five_through(users_db: Database, clock: FakeClock) -> None:
    """Attempts count before the password is checked: a burst cannot outrun the first failure
    (on PostgreSQL, three replicas' transactions on the same new row at once)."""
    throttles = [LoginThrottle(users_db, LIMITS, clock=clock) for _ in range(3)]  # three replicas
    results = await asyncio.gather(
        *(throttles[n % 3].admit("ada@example.com", f"198.51.100.{n}") for n in range(30)), return_exceptions=True
    )
    assert sum(isinstance(r, Attempt) for r in results) == 5
    assert all(isinstance(r, (Attempt, TooManyRequests)) for r in results), results


async def test_sweeping_keeps_what_still_limits(throttle: LoginThrottle, clock: FakeClock) -> None:
    for n in range(15):  # to the longest delay
        clock.now += LIMITS.delay_s(n)
        await fail(throttle, "ada@example.com", 1)
    await fail(throttle, "grace@example.com", 1, address="203.0.113.9")
    clock.now += 61
    assert await throttle.sweep() == 2  # both addresses' minute is over
    assert await refused(throttle, "ada@example.com") == 900 - 61  # the streaks are kept
    clock.now += 900 - 61 + 900 + 1
    assert await throttle.sweep() == 2  # until the window after the longest delay passed
    await fail(throttle, "ada@example.com", 5)


def request(peer: str | None, forwarded: str | None = None) -> Any:
    headers = {"x-forwarded-for": forwarded} if forwarded is not None else {}
    return SimpleNamespace(client=None if peer is None else SimpleNamespace(host=peer), headers=headers)


def test_the_client_address_is_the_gateways_header_only_from_a_trusted_peer() -> None:
    proxies = TrustedProxies.parse("127.0.0.0/8, ::1, 10.1.0.0/16", setting="S")
    assert proxies.client_address(request("127.0.0.1", "198.51.100.7")) == "198.51.100.7"
    assert proxies.client_address(request("10.1.2.3", "198.51.100.7")) == "198.51.100.7"
    assert proxies.client_address(request("nats", "198.51.100.7")) == "198.51.100.7"
    assert proxies.client_address(request("203.0.113.5", "198.51.100.7")) == "203.0.113.5"  # forged: ignored
    assert proxies.client_address(request("203.0.113.5")) == "203.0.113.5"
    assert proxies.client_address(request("127.0.0.1", "1.1.1.1, 198.51.100.7")) == "198.51.100.7"
    assert proxies.client_address(request("127.0.0.1", "not an address")) == "127.0.0.1"
    assert proxies.client_address(request(None)) == "unknown"


def test_an_ipv6_client_is_limited_by_its_64() -> None:
    proxies = TrustedProxies.parse("::1", setting="S")
    assert proxies.client_address(request("::1", "2001:db8:1:2::7")) == "2001:db8:1:2::/64"
    assert proxies.client_address(request("2001:db8:1:2:aaaa::1")) == "2001:db8:1:2::/64"
    assert proxies.client_address(request("::ffff:198.51.100.7")) == "198.51.100.7"


def test_a_malformed_trusted_proxy_fails_with_the_settings_name() -> None:
    with pytest.raises(ConfigError, match="MESHOP_USERS_TRUSTED_PROXIES"):
        TrustedProxies.parse("127.0.0.1, gateway.local", setting="MESHOP_USERS_TRUSTED_PROXIES")
