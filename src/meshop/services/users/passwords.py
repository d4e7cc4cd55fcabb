"""Password hashing that neither blocks the event loop nor blows the memory budget."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from meshop.mesh import ServiceUnavailable

T = TypeVar("T")


class Passwords:
    """argon2id (OWASP: m=19456 KiB, t=2, p=1) in a bounded worker pool.

    At most `workers` hashes run at once (each holds 19 MiB); at most `queue` more wait;
    beyond that, callers get 503 with Retry-After instead of unbounded memory and delay.
    argon2-cffi releases the GIL while hashing, so the event loop keeps serving.
    """

    def __init__(self, *, workers: int = 2, queue: int = 32) -> None:
        self._hasher = PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="argon2")
        self._slots = asyncio.Semaphore(workers + queue)
        # Verifying an unknown email against a real hash makes it cost the same time as
        # a wrong password, so response times do not reveal which emails exist.
        self._dummy: str | None = None

    async def hash(self, password: str) -> str:
        return await self._run(self._hasher.hash, password)

    async def verify(self, password_hash: str | None, password: str) -> bool:
        if self._dummy is None:
            self._dummy = await self.hash(secrets.token_hex(16))
        target = password_hash or self._dummy

        def check() -> bool:
            try:
                return self._hasher.verify(target, password)
            except (VerificationError, InvalidHashError):
                return False

        ok = await self._run(check)
        return ok and password_hash is not None

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        if self._slots.locked():
            raise ServiceUnavailable("too many logins in progress", retry_after_s=1.0)
        async with self._slots:
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
