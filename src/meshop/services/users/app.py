"""The users service: register, login, the caller's account, the JWKS."""

from __future__ import annotations

import os
import secrets
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import msgspec
import structlog
from sqlalchemy.exc import IntegrityError

from meshop.contracts import users as contract
from meshop.mesh import (
    Api,
    Conflict,
    NotFound,
    RequestContext,
    Runtime,
    ServiceDefinition,
    ServiceUnavailable,
    SigningKey,
    TokenVerifier,
    Unauthorized,
    from_env,
    read_page,
)
from meshop.services.users import events, store
from meshop.services.users.domain import Passwords
from meshop.services.users.sessions import KeyRing, RefreshTokens
from meshop.services.users.throttle import LoginLimits, LoginThrottle, TrustedProxies

log = structlog.get_logger("meshop.users")

ADMIN_EMAIL = "admin@meshop.local"


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _user(row: dict[str, Any]) -> contract.User:
    import json

    return contract.User(
        id=row["id"], email=row["email"], name=row["name"], roles=json.loads(row["roles"]), created_at=row["created_at"]
    )


async def initialize(runtime: Runtime) -> None:
    """Create the first signing key and the admin account, once, under the init lock."""
    db = runtime.database
    async with db.begin() as conn:
        if not await store.signing_keys_newest_first(conn):
            await store.insert_signing_key(conn, SigningKey.generate(), _now())
        if await store.find_by_email(conn, ADMIN_EMAIL) is not None:
            return
    configured = runtime.settings.admin_password
    password = configured or secrets.token_urlsafe(18)
    passwords = Passwords(workers=1, queue=0)
    try:
        password_hash = await passwords.hash(password)
    finally:
        passwords.close()
    async with db.begin() as conn:
        await store.insert_user(
            conn,
            id=uuid.uuid4().hex,
            email=ADMIN_EMAIL,
            name="Administrator",
            password_hash=password_hash,
            roles=["admin"],
            created_at=_now(),
        )
    if configured is None:
        path = _write_admin_password(runtime.settings.data_dir, password)
        # Printed once, on the run that created the account; kept only in that file.
        print(
            f"meshop: admin account {ADMIN_EMAIL} created; password: {password} (saved in {path}, mode 0600)",
            file=sys.stderr,
            flush=True,
        )


def _write_admin_password(data_dir: Path, password: str) -> Path:
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / "admin-password"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(password + "\n")
    os.chmod(path, 0o600)
    return path


class UsersSettings(msgspec.Struct, frozen=True, kw_only=True):
    """`MESHOP_USERS_*`."""

    access_token_ttl_s: Annotated[float, msgspec.Meta(ge=60, le=86_400)] = 900.0
    refresh_token_ttl_s: Annotated[float, msgspec.Meta(ge=60)] = 30 * 86_400.0
    #: A rotated-in key signs only after this long (default: two JWKS refreshes and 5 s).
    key_activation_s: Annotated[float, msgspec.Meta(ge=0)] | None = None
    #: Failed logins in a streak before each further attempt waits (per account).
    login_failures: Annotated[int, msgspec.Meta(ge=1)] = 5
    #: A streak ends this long after its last failure's delay passed with no new failure.
    login_window_s: Annotated[float, msgspec.Meta(gt=0)] = 900.0
    #: The wait after the `login_failures`-th failure; doubled by each further one, up to the max.
    login_first_delay_s: Annotated[float, msgspec.Meta(gt=0)] = 1.0
    login_max_delay_s: Annotated[float, msgspec.Meta(gt=0)] = 900.0
    #: Failed logins one client address may have in `login_address_window_s`.
    login_address_failures: Annotated[int, msgspec.Meta(ge=1)] = 20
    login_address_window_s: Annotated[float, msgspec.Meta(gt=0)] = 60.0
    #: Peers whose X-Forwarded-For names the client (the gateway's hosts), comma-separated
    #: addresses or networks. Requests over NATS are always believed (NATS permissions decide
    #: who may send them); anyone else is limited by their socket address.
    trusted_proxies: str = "127.0.0.0/8,::1"

    def login_limits(self) -> LoginLimits:
        return LoginLimits(
            failures=self.login_failures,
            window_s=self.login_window_s,
            first_delay_s=self.login_first_delay_s,
            max_delay_s=self.login_max_delay_s,
            per_address=self.login_address_failures,
            address_window_s=self.login_address_window_s,
        )


async def build(runtime: Runtime) -> Api:
    db = runtime.database
    settings = from_env(UsersSettings, "MESHOP_USERS_")
    activation_s = settings.key_activation_s
    if activation_s is None:
        activation_s = 2 * runtime.settings.jwks_refresh_s + 5
    passwords = Passwords()
    throttle = LoginThrottle(db, settings.login_limits())
    proxies = TrustedProxies.parse(settings.trusted_proxies, setting="MESHOP_USERS_TRUSTED_PROXIES")
    runtime.spawn(throttle.sweep_forever(), name="login-failures-sweep")
    keys = KeyRing(db, token_ttl_s=settings.access_token_ttl_s)
    refresh_tokens = RefreshTokens(db, ttl_s=settings.refresh_token_ttl_s)
    verifier = TokenVerifier(
        keys.jwks,
        refresh_interval_s=runtime.settings.jwks_refresh_s,
        revoked=runtime.revocations if runtime.revocations is not None else frozenset(),
    )
    api = Api("users", verifier=verifier, max_body_bytes=runtime.settings.max_body_bytes)

    async def tokens_for(user_id: str, roles: list[str], refresh_token: str) -> contract.Token:
        issuer = await keys.issuer()
        return contract.Token(
            access_token=issuer.issue(user_id, roles),
            token_type="bearer",
            expires_in=int(issuer.ttl_s),
            refresh_token=refresh_token,
            refresh_expires_in=int(refresh_tokens.ttl_s),
        )

    @api.implement(contract.REGISTER)
    async def register(_ctx: RequestContext, body: contract.RegisterRequest) -> contract.User:
        email = body.email.strip().lower()
        password_hash = await passwords.hash(body.password)
        row: dict[str, Any] = {
            "id": uuid.uuid4().hex,
            "email": email,
            "name": body.name.strip(),
            "password_hash": password_hash,
            "roles": ["customer"],
            "created_at": _now(),
        }
        try:
            async with db.begin() as conn:
                await store.insert_user(conn, **row)
        except IntegrityError:
            raise Conflict("an account with this email already exists") from None
        return contract.User(
            id=row["id"], email=email, name=row["name"], roles=["customer"], created_at=row["created_at"]
        )

    @api.implement(contract.LOGIN)
    async def login(ctx: RequestContext, body: contract.LoginRequest) -> contract.Token:
        # Known or not, an email goes through the same steps: the throttle, one argon2
        # verification (of a dummy hash when no account has it), the same refusal.
        attempt = await throttle.admit(body.email, proxies.client_address(ctx.request))
        async with db.read() as conn:
            row = await store.find_by_email(conn, body.email.strip().lower())
        try:
            ok = await passwords.verify(row["password_hash"] if row else None, body.password)
        except ServiceUnavailable:
            await throttle.unchecked(attempt)
            raise
        if not ok or row is None:
            raise Unauthorized("wrong email or password")
        await throttle.succeeded(attempt)
        return await tokens_for(row["id"], _user(row).roles, await refresh_tokens.start(row["id"]))

    @api.implement(contract.REFRESH)
    async def refresh(_ctx: RequestContext, body: contract.RefreshRequest) -> contract.Token:
        user_id, rotated = await refresh_tokens.rotate(body.refresh_token)
        async with db.read() as conn:
            row = await store.find_by_id(conn, user_id)
        if row is None:
            raise Unauthorized("the account no longer exists")
        return await tokens_for(user_id, _user(row).roles, rotated)

    @api.implement(contract.LOGOUT)
    async def logout(ctx: RequestContext, body: contract.LogoutRequest) -> None:
        identity = ctx.user
        if runtime.revocations is not None:
            await runtime.revocations.revoke(identity.token_id, identity.expires_at)
        if body.refresh_token:
            await refresh_tokens.end_session(body.refresh_token, identity.user_id)

    @api.implement(contract.ROTATE_KEYS)
    async def rotate_keys(_ctx: RequestContext, _body: None) -> contract.KeyRotation:
        key, activates_at, published_kids = await keys.rotate(activation_s)
        log.info("signing key rotated", kid=key.kid, activates_in_s=activation_s)
        return contract.KeyRotation(
            kid=key.kid,
            activates_at=datetime.fromtimestamp(activates_at, UTC).isoformat(),
            published_kids=published_kids,
        )

    @api.implement(contract.ME)
    async def me(ctx: RequestContext, _body: None) -> contract.User:
        async with db.read() as conn:
            row = await store.find_by_id(conn, ctx.user.user_id)
        if row is None:
            raise NotFound("account not found")
        return _user(row)

    @api.implement(contract.MY_ORDER_STATS)
    async def my_order_stats(ctx: RequestContext, _body: None) -> contract.OrderStats:
        async with db.read() as conn:
            row = await store.order_stats_of(conn, ctx.user.user_id)
        return (
            _stats(row)
            if row
            else contract.OrderStats(user_id=ctx.user.user_id, placed=0, confirmed=0, cancelled=0, spent_cents=0)
        )

    @api.implement(contract.ADMIN_ORDER_STATS)
    async def admin_order_stats(ctx: RequestContext, _body: None) -> contract.OrderStatsPage:
        items, cursor = await read_page(ctx, db, store.order_stats, store.order_stats.c.user_id, _stats)
        return contract.OrderStatsPage(items=items, next_cursor=cursor)

    runtime.consume(
        "order-stats",
        events=events.ORDER_STATS_EVENTS,
        handler=events.count_order_event,
        reset=events.reset_order_stats,
    )

    @api.implement(contract.JWKS)
    async def jwks(_ctx: RequestContext, _body: None) -> contract.Jwks:
        return contract.Jwks(keys=(await keys.jwks())["keys"])

    return api


def _stats(row: Any) -> contract.OrderStats:
    return contract.OrderStats(
        user_id=row.user_id,
        placed=row.placed,
        confirmed=row.confirmed,
        cancelled=row.cancelled,
        spent_cents=row.spent_cents,
    )


DEFINITION = ServiceDefinition(
    name="users",
    build=build,
    migrations=Path(__file__).parent / "migrations",
    initialize=initialize,
)
