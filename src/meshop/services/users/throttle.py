"""Failed logins, limited per account and per client address, in the users database.

Every replica reads and writes the same rows (SQLite beside one machine's replicas,
PostgreSQL across machines), so the limits hold however many replicas serve logins and
whichever one a request reaches (docs/decisions/0016).

Per account: the email as typed, whether or not an account has it, so that a refusal
says nothing about which emails exist. After `failures` failures in a streak, each
further attempt waits `first_delay_s` after the last failure, doubling with every
failure up to `max_delay_s`; an attempt that comes earlier is refused (429 with
Retry-After) without its password being checked, so a correct password gets the same
429. A success ends the streak; so does `window_s` passing after the last failure's delay
with no new failure. (A streak cannot simply be "the failures of the last 15 minutes":
the delays add up to more than that, so the count would never reach the longer delays.)

Per address: at most `per_address` failed logins in any `address_window_s` (a sliding
window: the times of the recent failures are kept).

An attempt is counted as failed before its password is checked and refunded when it
succeeds: a burst of concurrent guesses cannot all pass the check before the first
failure is written.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn

import structlog
from sqlalchemy.exc import IntegrityError
from starlette.requests import Request

from meshop.mesh import ConfigError, Conn, Database, TooManyRequests
from meshop.services.users import store

log = structlog.get_logger("meshop.users.throttle")

Clock = Callable[[], float]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Requests over NATS have no socket address: the header is all there is, and NATS
#: permissions (who may publish on `meshop.rpc.users.*`) decide who can send one.
NATS_PEER = "nats"
#: Two writers of the same new row at once (PostgreSQL): the loser retries and finds it.
_ATTEMPTS = 3


@dataclass(frozen=True, slots=True)
class LoginLimits:
    """How many failed logins an account and an address may have, and the delays after them."""

    failures: int = 5
    window_s: float = 900.0
    first_delay_s: float = 1.0
    max_delay_s: float = 900.0
    per_address: int = 20
    address_window_s: float = 60.0

    def delay_s(self, failures: int) -> float:
        """How long after its last failure an account with `failures` in its streak waits."""
        if failures < self.failures:
            return 0.0
        doublings = min(failures - self.failures, 64)  # 2**64 s is past any cap
        return float(min(self.max_delay_s, self.first_delay_s * 2.0**doublings))


@dataclass(frozen=True, slots=True)
class Attempt:
    """A login attempt let through (and already counted as failed)."""

    account: str
    address: str
    at: float


def account_key(email: str) -> str:
    """The key of an account's failures: the email as it is looked up, hashed to a fixed size."""
    return hashlib.sha256(email.strip().lower().encode()).hexdigest()


class LoginThrottle:
    """Admits login attempts, or refuses them with 429 while an account or address is limited."""

    def __init__(self, db: Database, limits: LoginLimits, *, clock: Clock = time.time) -> None:
        self._db = db
        self.limits = limits
        self._clock = clock

    async def admit(self, email: str, address: str) -> Attempt:
        """Count an attempt as failed and let it through; TooManyRequests while limited."""
        account = account_key(email)
        for attempt in range(_ATTEMPTS):
            try:
                async with self._db.begin() as conn:
                    return await self._admit(conn, account, address)
            except IntegrityError:
                if attempt == _ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    async def _admit(self, conn: Conn, account: str, address: str) -> Attempt:
        limits, now = self.limits, self._clock()
        stored = await store.address_failures(conn, address)
        recent = [at for at in stored or [] if at > now - limits.address_window_s]
        if len(recent) >= limits.per_address:
            # The window slides: wait until enough of the oldest failures have left it.
            _refuse(recent[len(recent) - limits.per_address] + limits.address_window_s - now)
        streak = await store.account_failures(conn, account)
        failures = 0
        if streak is not None:
            failures, last = streak
            free_at = last + limits.delay_s(failures)
            if now < free_at:
                _refuse(free_at - now)
            if now >= free_at + limits.window_s:
                failures = 0  # the streak is over
        await store.put_address_failures(conn, address, [*recent, now], exists=stored is not None)
        await store.put_account_failures(conn, account, failures + 1, now, exists=streak is not None)
        return Attempt(account=account, address=address, at=now)

    async def succeeded(self, attempt: Attempt) -> None:
        """The password was right: end the account's streak and take the attempt off the address."""
        async with self._db.begin() as conn:
            await store.forget_account_failures(conn, attempt.account)
            await self._refund_address(conn, attempt)

    async def unchecked(self, attempt: Attempt) -> None:
        """The password was never checked (no capacity to hash it): the attempt does not count."""
        async with self._db.begin() as conn:
            await store.uncount_account_failure(conn, attempt.account)
            await self._refund_address(conn, attempt)

    @staticmethod
    async def _refund_address(conn: Conn, attempt: Attempt) -> None:
        recent = await store.address_failures(conn, attempt.address)
        if recent is not None and attempt.at in recent:
            recent.remove(attempt.at)
            await store.put_address_failures(conn, attempt.address, recent, exists=True)

    async def sweep(self) -> int:
        """Delete the records that limit nothing any more; how many there were."""
        limits, now = self.limits, self._clock()
        async with self._db.begin() as conn:
            return await store.sweep_login_failures(
                conn,
                # a streak at the longest delay still counts until the window after it has passed
                accounts_before=now - limits.max_delay_s - limits.window_s,
                addresses_before=now - limits.address_window_s,
            )

    async def sweep_forever(self, interval_s: float = 60.0) -> None:
        """Sweep every `interval_s` (a failed sweep is logged and tried again)."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.sweep()
            except Exception as exc:
                log.warning("sweeping failed logins failed", error=repr(exc))


def _refuse(wait_s: float) -> NoReturn:
    # Whole seconds, rounded up: a client that waits exactly Retry-After is let through.
    # The same words whether the account exists or not, and whichever limit refused.
    raise TooManyRequests("too many failed logins; try again later", retry_after_s=max(1, math.ceil(wait_s)))


class TrustedProxies:
    """Which peers' `X-Forwarded-For` names the client (the gateway's, which sets it)."""

    def __init__(self, networks: list[Network]) -> None:
        self._networks = networks

    @classmethod
    def parse(cls, text: str, *, setting: str) -> TrustedProxies:
        """From a comma-separated list of addresses and networks; ConfigError names `setting`."""
        try:
            return cls([ipaddress.ip_network(part.strip(), strict=False) for part in text.split(",") if part.strip()])
        except ValueError as exc:
            raise ConfigError(f"invalid setting {setting}: {exc}") from None

    def trusts(self, peer: str) -> bool:
        if peer == NATS_PEER:
            return True
        try:
            ip = ipaddress.ip_address(peer)
        except ValueError:
            return False
        return any(ip in network for network in self._networks)

    def client_address(self, request: Request) -> str:
        """The client's address: the gateway's X-Forwarded-For if a trusted peer sent it, else the peer's.

        An IPv6 client is limited by its /64, which one subscriber usually holds whole.
        """
        peer = request.client.host if request.client is not None else "unknown"
        address = peer
        forwarded = request.headers.get("x-forwarded-for")
        if forwarded and self.trusts(peer):
            address = forwarded.rsplit(",", 1)[-1].strip()  # the one the nearest proxy added
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return peer[:64]
        if isinstance(ip, ipaddress.IPv6Address):
            if ip.ipv4_mapped is not None:
                return str(ip.ipv4_mapped)
            return str(ipaddress.ip_network(f"{ip}/64", strict=False))
        return str(ip)
