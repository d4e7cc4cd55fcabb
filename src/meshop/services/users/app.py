"""The users service: its settings and definition, and `build`, which wires its handlers to its API."""

from __future__ import annotations

import os
import secrets
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import msgspec

from meshop.contracts import users as contract
from meshop.mesh import Api, Runtime, ServiceDefinition, SigningKey, TokenVerifier, from_env
from meshop.services.users import domain, events, store
from meshop.services.users.handlers import Users
from meshop.services.users.passwords import Passwords
from meshop.services.users.sessions import KeyRing, RefreshTokens
from meshop.services.users.throttle import LoginLimits, LoginThrottle, TrustedProxies


def _now() -> str:
    return datetime.now(UTC).isoformat()


async def initialize(runtime: Runtime) -> None:
    """Create the first signing key and the admin account, once, under the init lock."""
    db = runtime.database
    async with db.begin() as conn:
        if not await store.signing_keys_newest_first(conn):
            await store.insert_signing_key(conn, SigningKey.generate(), _now())
        if await store.find_by_email(conn, domain.ADMIN_EMAIL) is not None:
            return
    configured = runtime.settings.admin_password
    password = configured or secrets.token_urlsafe(18)
    passwords = Passwords(workers=1, queue=0)
    try:
        password_hash = await passwords.hash(password)
    finally:
        passwords.close()
    async with db.begin() as conn:
        row = domain.new_account(
            domain.ADMIN_EMAIL, "Administrator", password_hash, roles=domain.ADMIN_ROLES, now=_now()
        )
        await store.insert_user(conn, **row)
    if configured is None:
        path = _write_admin_password(runtime.settings.data_dir, password)
        # Printed once, on the run that created the account; kept only in that file.
        print(
            f"meshop: admin account {domain.ADMIN_EMAIL} created; password: {password} (saved in {path}, mode 0600)",
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
    throttle = LoginThrottle(db, settings.login_limits())
    runtime.spawn(throttle.sweep_forever(), name="login-failures-sweep")
    keys = KeyRing(db, token_ttl_s=settings.access_token_ttl_s)
    users = Users(
        db=db,
        passwords=Passwords(),
        throttle=throttle,
        proxies=TrustedProxies.parse(settings.trusted_proxies, setting="MESHOP_USERS_TRUSTED_PROXIES"),
        keys=keys,
        refresh_tokens=RefreshTokens(db, ttl_s=settings.refresh_token_ttl_s),
        revocations=runtime.revocations,
        key_activation_s=activation_s,
    )
    verifier = TokenVerifier(
        keys.jwks,
        refresh_interval_s=runtime.settings.jwks_refresh_s,
        revoked=runtime.revocations if runtime.revocations is not None else frozenset(),
    )
    api = Api("users", verifier=verifier, max_body_bytes=runtime.settings.max_body_bytes)
    api.implement(contract.REGISTER)(users.register)
    api.implement(contract.LOGIN)(users.login)
    api.implement(contract.REFRESH)(users.refresh)
    api.implement(contract.LOGOUT)(users.logout)
    api.implement(contract.ROTATE_KEYS)(users.rotate_keys)
    api.implement(contract.ME)(users.me)
    api.implement(contract.MY_ORDER_STATS)(users.my_order_stats)
    api.implement(contract.ADMIN_ORDER_STATS)(users.admin_order_stats)
    api.implement(contract.JWKS)(users.jwks)
    runtime.consume(
        "order-stats",
        handler=events.count_order_event,
        reset=events.reset_order_stats,
    )
    return api


DEFINITION = ServiceDefinition(
    name="users",
    build=build,
    contract=contract,
    migrations=Path(__file__).parent / "migrations",
    initialize=initialize,
    consumes={"order-stats": events.ORDER_STATS_EVENTS},
)
