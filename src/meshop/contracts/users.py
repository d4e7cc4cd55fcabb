"""The users service: accounts, login, identity tokens and their public keys."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import Meta

from meshop.mesh.auth import TokenVerifier
from meshop.mesh.operation import Access, Operation
from meshop.mesh.service import Runtime

Email = Annotated[str, Meta(pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$", max_length=254)]
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
    errors=(401,),
    summary="Exchange email and password for an access token",
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

    return TokenVerifier(fetch)
