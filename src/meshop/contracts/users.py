"""The users service: accounts, login, identity tokens and their public keys."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import Meta

from meshop.mesh import (
    Access,
    Example,
    Operation,
    Runtime,
    TokenVerifier,
    consumers_operation,
    outbox_operation,
    replay_operation,
)

# Explicit ranges rather than \s: JSON Schema (ECMA-262) and Python disagree on what \s
# matches (Python's includes \x1c-\x1f), and the schema must mean what the server does.
Email = Annotated[
    str,
    Meta(
        pattern=r"^[^@\x00-\x20\x7f]+@[^@\x00-\x20\x7f]+\.[^@\x00-\x20\x7f]+$",
        max_length=254,
        description="an email address",  # what a rejection says the value must be (mesh/api/validation.py)
        examples=["name@example.com"],
    ),
]
Password = Annotated[str, Meta(min_length=8, max_length=256)]


class RegisterRequest(msgspec.Struct, kw_only=True):
    email: Email
    password: Password
    name: Annotated[str, Meta(min_length=1, max_length=100)]


class LoginRequest(msgspec.Struct, kw_only=True):
    email: Annotated[str, Meta(max_length=254)]
    password: Annotated[str, Meta(max_length=256)]


class User(msgspec.Struct, kw_only=True):
    id: str
    email: str
    name: str
    roles: list[str]
    created_at: str


class Token(msgspec.Struct, kw_only=True):
    access_token: str
    token_type: str
    expires_in: int
    #: Exchanged once at /refresh for a new pair; using it twice revokes the whole session.
    refresh_token: str
    refresh_expires_in: int


RefreshSecret = Annotated[str, Meta(min_length=1, max_length=200)]


class RefreshRequest(msgspec.Struct, kw_only=True):
    refresh_token: RefreshSecret


class LogoutRequest(msgspec.Struct, kw_only=True):
    #: Also end the session this refresh token belongs to.
    refresh_token: RefreshSecret | None = None


class KeyRotation(msgspec.Struct, kw_only=True):
    kid: str
    #: When tokens start being signed with it (every verifier has fetched it by then).
    activates_at: str
    published_kids: list[str]


class Jwks(msgspec.Struct):
    keys: list[dict[str, Any]]


REGISTER = Operation(
    "users",
    "register",
    "POST",
    "/register",
    RegisterRequest,
    User,
    Access.PUBLIC,
    status=201,
    errors=(409,),
    summary="Create an account",
)
LOGIN = Operation(
    "users",
    "login",
    "POST",
    "/login",
    LoginRequest,
    Token,
    Access.PUBLIC,
    # 429 with Retry-After: too many failed logins for this email or from this address
    # (the same answer whether an account has the email or not).
    errors=(401, 429),
    summary="Exchange email and password for an access token",
)
REFRESH = Operation(
    "users",
    "refresh",
    "POST",
    "/refresh",
    RefreshRequest,
    Token,
    Access.PUBLIC,
    errors=(401,),
    summary="Exchange a refresh token for a new access and refresh token (rotation)",
)
LOGOUT: Operation[LogoutRequest, None] = Operation(
    "users",
    "logout",
    "POST",
    "/logout",
    LogoutRequest,
    None,
    Access.USER,
    status=204,
    idempotent=True,
    summary="Revoke this access token (and the session of the given refresh token)",
)
ROTATE_KEYS: Operation[None, KeyRotation] = Operation(
    "users",
    "rotate_keys",
    "POST",
    "/admin/keys/rotate",
    None,
    KeyRotation,
    Access.ADMIN,
    summary="Create a new signing key, published now and used once every verifier knows it",
)
ME: Operation[None, User] = Operation(
    "users", "me", "GET", "/me", None, User, Access.USER, idempotent=True, summary="The caller's account"
)
JWKS: Operation[None, Jwks] = Operation(
    "users",
    "jwks",
    "GET",
    "/.well-known/jwks.json",
    None,
    Jwks,
    Access.PUBLIC,
    idempotent=True,
    summary="Public keys that verify access tokens",
)


def remote_verifier(runtime: Runtime) -> TokenVerifier:
    """A token verifier whose keys come from the users service's JWKS."""

    async def fetch() -> dict[str, Any]:
        jwks = await runtime.client.call(JWKS, timeout_s=3.0)
        return {"keys": jwks.keys}

    return TokenVerifier(
        fetch,
        refresh_interval_s=runtime.settings.jwks_refresh_s,
        revoked=runtime.revocations if runtime.revocations is not None else frozenset(),
    )


class OrderStats(msgspec.Struct, kw_only=True):
    """One customer's orders, as the users service's read model has seen them (from events)."""

    user_id: str
    placed: int
    confirmed: int
    cancelled: int
    #: Σ total_cents of the customer's confirmed orders.
    spent_cents: int


class OrderStatsPage(msgspec.Struct, kw_only=True):
    items: list[OrderStats]
    next_cursor: str | None


MY_ORDER_STATS: Operation[None, OrderStats] = Operation(
    "users",
    "my_order_stats",
    "GET",
    "/me/order-stats",
    None,
    OrderStats,
    Access.USER,
    idempotent=True,
    summary="The caller's orders placed, confirmed, cancelled and spent (eventually consistent)",
)
ADMIN_ORDER_STATS: Operation[None, OrderStatsPage] = Operation(
    "users",
    "admin_order_stats",
    "GET",
    "/admin/order-stats",
    None,
    OrderStatsPage,
    Access.ADMIN,
    idempotent=True,
    errors=(422,),
    summary="Every customer's order statistics (limit <= 1000, cursor)",
)
ADMIN_CONSUMERS = consumers_operation("users")
#: Always empty (users emits no events), served like every service's.
ADMIN_OUTBOX = outbox_operation("users")
ADMIN_REPLAY = replay_operation("users")


# What /docs and /openapi.json show for each operation (every one validates: tests/gateway).
_ADA = User(
    id="5f0c8a52-3c1e-4f7b-9a57-0d3c2e7b91a4",
    email="ada@example.com",
    name="Ada Lovelace",
    roles=["customer"],
    created_at="2026-12-06T09:30:00+00:00",
)
_TOKEN = Token(
    access_token="eyJhbGciOiJFZERTQSIsImtpZCI6ImsxIn0.eyJzdWIiOiI1ZjBjOGE1MiJ9.c2lnbmF0dXJl",
    token_type="bearer",
    expires_in=900,
    refresh_token="rt_3q2vT8kXb0mQ7nYw1eZp4sLc",
    refresh_expires_in=1_209_600,
)
_STATS = OrderStats(user_id=_ADA.id, placed=3, confirmed=2, cancelled=1, spent_cents=10_800)
EXAMPLES: dict[Operation[Any, Any], Example] = {
    REGISTER: Example(
        request=RegisterRequest(email="ada@example.com", password="correct horse battery", name="Ada Lovelace"),
        response=_ADA,
    ),
    LOGIN: Example(request=LoginRequest(email="ada@example.com", password="correct horse battery"), response=_TOKEN),
    REFRESH: Example(request=RefreshRequest(refresh_token=_TOKEN.refresh_token), response=_TOKEN),
    LOGOUT: Example(request=LogoutRequest(refresh_token=_TOKEN.refresh_token)),
    ME: Example(response=_ADA),
    MY_ORDER_STATS: Example(response=_STATS),
    JWKS: Example(
        response=Jwks(
            keys=[
                {
                    "kty": "OKP",
                    "crv": "Ed25519",
                    "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo",
                    "kid": "k1",
                    "alg": "EdDSA",
                    "use": "sig",
                }
            ]
        )
    ),
    ROTATE_KEYS: Example(
        response=KeyRotation(kid="k2", activates_at="2026-12-06T10:05:00+00:00", published_kids=["k1", "k2"])
    ),
    ADMIN_ORDER_STATS: Example(response=OrderStatsPage(items=[_STATS], next_cursor=None)),
}
