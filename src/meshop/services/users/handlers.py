"""The users' operations: register, log in and out, refresh, the caller's account and
order stats, signing-key rotation, the JWKS."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Protocol

import structlog
from sqlalchemy.exc import IntegrityError

from meshop.contracts import users as contract
from meshop.mesh import (
    Conflict,
    Database,
    NotFound,
    RequestContext,
    ServiceUnavailable,
    Unauthorized,
    read_page,
)
from meshop.services.users import domain, store
from meshop.services.users.passwords import Passwords
from meshop.services.users.sessions import KeyRing, RefreshTokens
from meshop.services.users.throttle import LoginThrottle, TrustedProxies

log = structlog.get_logger("meshop.users")


def _now() -> str:
    return datetime.now(UTC).isoformat()


class Revocations(Protocol):
    """What logging out needs of the process's revocation list (`runtime.revocations`)."""

    async def revoke(self, jti: str, expires_at: float) -> None: ...


class Users:
    """One method per operation of the users' contract.

    `revocations`: where a logout revokes its access token (None: tokens live until they
    expire); `key_activation_s`: how long a rotated-in signing key waits before signing.
    """

    def __init__(
        self,
        *,
        db: Database,
        passwords: Passwords,
        throttle: LoginThrottle,
        proxies: TrustedProxies,
        keys: KeyRing,
        refresh_tokens: RefreshTokens,
        revocations: Revocations | None,
        key_activation_s: float,
    ) -> None:
        self._db = db
        self._passwords = passwords
        self._throttle = throttle
        self._proxies = proxies
        self._keys = keys
        self._refresh_tokens = refresh_tokens
        self._revocations = revocations
        self._key_activation_s = key_activation_s

    async def register(self, _ctx: RequestContext, body: contract.RegisterRequest) -> contract.User:
        password_hash = await self._passwords.hash(body.password)
        row = domain.new_account(body.email, body.name, password_hash, roles=domain.CUSTOMER_ROLES, now=_now())
        try:
            async with self._db.begin() as conn:
                await store.insert_user(conn, **row)
        except IntegrityError:
            raise Conflict("an account with this email already exists") from None
        return contract.User(
            id=row["id"], email=row["email"], name=row["name"], roles=row["roles"], created_at=row["created_at"]
        )

    async def login(self, ctx: RequestContext, body: contract.LoginRequest) -> contract.Token:
        # Known or not, an email goes through the same steps: the throttle, one argon2
        # verification (of a dummy hash when no account has it), the same refusal.
        attempt = await self._throttle.admit(body.email, self._proxies.client_address(ctx.request))
        async with self._db.read() as conn:
            row = await store.find_by_email(conn, domain.normalize_email(body.email))
        try:
            ok = await self._passwords.verify(row["password_hash"] if row else None, body.password)
        except ServiceUnavailable:
            await self._throttle.unchecked(attempt)
            raise
        if not ok or row is None:
            raise Unauthorized("wrong email or password")
        await self._throttle.succeeded(attempt)
        return await self._tokens_for(row["id"], domain.user(row).roles, await self._refresh_tokens.start(row["id"]))

    async def refresh(self, _ctx: RequestContext, body: contract.RefreshRequest) -> contract.Token:
        user_id, rotated = await self._refresh_tokens.rotate(body.refresh_token)
        async with self._db.read() as conn:
            row = await store.find_by_id(conn, user_id)
        if row is None:
            raise Unauthorized("the account no longer exists")
        return await self._tokens_for(user_id, domain.user(row).roles, rotated)

    async def logout(self, ctx: RequestContext, body: contract.LogoutRequest) -> None:
        identity = ctx.user
        if self._revocations is not None:
            await self._revocations.revoke(identity.token_id, identity.expires_at)
        if body.refresh_token:
            await self._refresh_tokens.end_session(body.refresh_token, identity.user_id)

    async def rotate_keys(self, _ctx: RequestContext, _body: None) -> contract.KeyRotation:
        key, activates_at, published_kids = await self._keys.rotate(self._key_activation_s)
        log.info("signing key rotated", kid=key.kid, activates_in_s=self._key_activation_s)
        return contract.KeyRotation(
            kid=key.kid,
            activates_at=datetime.fromtimestamp(activates_at, UTC).isoformat(),
            published_kids=published_kids,
        )

    async def me(self, ctx: RequestContext, _body: None) -> contract.User:
        async with self._db.read() as conn:
            row = await store.find_by_id(conn, ctx.user.user_id)
        if row is None:
            raise NotFound("account not found")
        return domain.user(row)

    async def my_order_stats(self, ctx: RequestContext, _body: None) -> contract.OrderStats:
        async with self._db.read() as conn:
            row = await store.order_stats_of(conn, ctx.user.user_id)
        return domain.stats(row) if row else domain.no_stats(ctx.user.user_id)

    async def admin_order_stats(self, ctx: RequestContext, _body: None) -> contract.OrderStatsPage:
        items, cursor = await read_page(ctx, self._db, store.order_stats, store.order_stats.c.user_id, domain.stats)
        return contract.OrderStatsPage(items=items, next_cursor=cursor)

    async def jwks(self, _ctx: RequestContext, _body: None) -> contract.Jwks:
        return contract.Jwks(keys=(await self._keys.jwks())["keys"])

    async def _tokens_for(self, user_id: str, roles: list[str], refresh_token: str) -> contract.Token:
        issuer = await self._keys.issuer()
        return contract.Token(
            access_token=issuer.issue(user_id, roles),
            token_type="bearer",
            expires_in=int(issuer.ttl_s),
            refresh_token=refresh_token,
            refresh_expires_in=int(self._refresh_tokens.ttl_s),
        )
