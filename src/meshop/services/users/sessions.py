"""Signing keys that rotate without downtime, and refresh tokens that rotate on use.

Key rotation: a new key is published in the JWKS at once but signs only from
`activates_at` on, after every verifier's periodic JWKS refresh has picked it up; the
previous key stays published until the last token it signed has expired.

Refresh tokens: opaque secrets, stored as their SHA-256. Each use returns a new one in the
same family and marks the old one used; presenting a used one again means it was copied,
so the whole family is revoked (RFC 9700 §4.14.2 refresh token rotation).
"""

from __future__ import annotations

import hashlib
import secrets
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from meshop.mesh import Conn, Database, SigningKey, TokenIssuer, Unauthorized
from meshop.services.users import store

Clock = Callable[[], float]


def published(keys: list[store.StoredKey], now: float, token_ttl_s: float) -> list[store.StoredKey]:
    """Keys verifiers must know: pending ones, the active one, and older ones whose tokens may live.

    `keys` is newest first. An older key is retired once the key that took over from it has
    been active for longer than a token lives (plus a minute of clock leeway).
    """
    out = []
    superseded_at: float | None = None  # when the newer active key took over from this one
    for stored in keys:
        starts = stored.activates_at or 0.0
        if starts > now:  # pending: published ahead of signing
            out.append(stored)
            continue
        if superseded_at is not None and now - superseded_at > token_ttl_s + 60:
            break
        out.append(stored)
        superseded_at = starts
    return out


def signing_key(keys: list[store.StoredKey], now: float) -> SigningKey:
    """The newest key already active."""
    for stored in keys:
        if stored.activates_at is None or stored.activates_at <= now:
            return stored.key
    raise Unauthorized("no active signing key")


class KeyRing:
    """This process's view of the signing keys (re-read at most every `reload_s`)."""

    def __init__(self, db: Database, *, token_ttl_s: float, reload_s: float = 1.0, clock: Clock = time.time) -> None:
        self._db = db
        self._token_ttl_s = token_ttl_s
        self._reload_s = reload_s
        self._clock = clock
        self._keys: list[store.StoredKey] = []
        self._loaded_at = float("-inf")
        self._issuers: dict[str, TokenIssuer] = {}

    async def _current(self) -> list[store.StoredKey]:
        if self._clock() - self._loaded_at >= self._reload_s:
            async with self._db.read() as conn:
                self._keys = await store.signing_keys_newest_first(conn)
            self._loaded_at = self._clock()
        return self._keys

    async def issuer(self) -> TokenIssuer:
        key = signing_key(await self._current(), self._clock())
        issuer = self._issuers.get(key.kid)
        if issuer is None:
            issuer = self._issuers[key.kid] = TokenIssuer(key, ttl_s=self._token_ttl_s, clock=self._clock)
        return issuer

    async def jwks(self) -> dict[str, Any]:
        keys = published(await self._current(), self._clock(), self._token_ttl_s)
        return {"keys": [k.key.public_jwk() for k in keys]}

    async def rotate(self, activation_s: float) -> tuple[SigningKey, float, list[str]]:
        key = SigningKey.generate()
        activates_at = self._clock() + activation_s
        async with self._db.begin() as conn:
            await store.insert_signing_key(conn, key, datetime.now(UTC).isoformat(), activates_at=activates_at)
        self._loaded_at = float("-inf")
        published_kids = [k["kid"] for k in (await self.jwks())["keys"]]
        return key, activates_at, published_kids


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class RefreshTokens:
    def __init__(self, db: Database, *, ttl_s: float, clock: Clock = time.time) -> None:
        self._db = db
        self.ttl_s = ttl_s
        self._clock = clock

    async def issue(self, conn: Conn, user_id: str, family: str | None = None) -> str:
        secret = "rt_" + secrets.token_urlsafe(32)
        now = self._clock()
        await store.insert_refresh_token(
            conn,
            id=_hash(secret),
            family=family or uuid.uuid4().hex,
            user_id=user_id,
            expires_at=now + self.ttl_s,
            created_at=now,
        )
        return secret

    async def start(self, user_id: str) -> str:
        async with self._db.begin() as conn:
            return await self.issue(conn, user_id)

    async def rotate(self, secret: str) -> tuple[str, str]:
        """(user id, the new refresh token) for a valid unused token; revokes the family on reuse."""
        token_hash, now = _hash(secret), self._clock()
        reused = False
        async with self._db.begin() as conn:
            row = await store.refresh_token(conn, token_hash)
            if row is None or row.revoked or row.expires_at <= now:
                raise Unauthorized("refresh token is unknown, expired or revoked")
            if row.used_at is not None or not await store.use_refresh_token(conn, token_hash, now):
                await store.revoke_family(conn, row.family)  # committed: then refuse
                reused = True
            else:
                return row.user_id, await self.issue(conn, row.user_id, row.family)
        assert reused
        raise Unauthorized("refresh token reused: the session is revoked; log in again")

    async def end_session(self, secret: str, user_id: str) -> None:
        async with self._db.begin() as conn:
            row = await store.refresh_token(conn, _hash(secret))
            if row is not None and row.user_id == user_id:
                await store.revoke_family(conn, row.family)
