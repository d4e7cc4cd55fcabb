"""Identity tokens: issuing, verifying, rejecting forgeries, JWKS refresh with a fake clock."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

import pytest

from meshop.mesh.auth import SigningKey, TokenIssuer, TokenVerifier
from meshop.mesh.errors import Unauthorized


class FakeClock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Jwks:
    def __init__(self, *keys: SigningKey) -> None:
        self.keys = list(keys)
        self.fetches = 0

    async def __call__(self) -> dict[str, Any]:
        self.fetches += 1
        return {"keys": [k.public_jwk() for k in self.keys]}


@pytest.fixture
def key() -> SigningKey:
    return SigningKey.generate()


async def test_a_fresh_token_verifies_to_its_identity(key: SigningKey) -> None:
    clock = FakeClock()
    token = TokenIssuer(key, clock=clock).issue("user-1", ["customer"])
    identity = await TokenVerifier(Jwks(key), clock=clock).verify(token)
    assert identity.user_id == "user-1"
    assert identity.roles == frozenset({"customer"})
    assert not identity.is_admin


async def test_an_expired_token_is_rejected(key: SigningKey) -> None:
    clock = FakeClock()
    token = TokenIssuer(key, ttl_s=900, clock=clock).issue("u", [])
    verifier = TokenVerifier(Jwks(key), clock=clock)
    await verifier.verify(token)
    clock.now += 900 + 6  # past expiry and leeway: even the claims cache refuses it
    with pytest.raises(Unauthorized):
        await verifier.verify(token)


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


async def test_alg_none_is_rejected(key: SigningKey) -> None:
    forged = _b64({"alg": "none", "kid": key.kid}) + "." + _b64({"sub": "admin", "roles": ["admin"]}) + "."
    with pytest.raises(Unauthorized):
        await TokenVerifier(Jwks(key)).verify(forged)


async def test_a_tampered_payload_is_rejected(key: SigningKey) -> None:
    clock = FakeClock()
    header, _payload, signature = TokenIssuer(key, clock=clock).issue("u", ["customer"]).split(".")
    evil = _b64(
        {
            "sub": "u",
            "roles": ["admin"],
            "exp": clock.now + 60,
            "iat": clock.now,
            "aud": "meshop",
            "iss": "meshop-users",
        }
    )
    with pytest.raises(Unauthorized):
        await TokenVerifier(Jwks(key), clock=clock).verify(f"{header}.{evil}.{signature}")


async def test_a_token_signed_by_another_key_with_a_known_kid_is_rejected(key: SigningKey) -> None:
    other = SigningKey(kid=key.kid, private_pem=SigningKey.generate().private_pem)
    token = TokenIssuer(other).issue("u", [])
    with pytest.raises(Unauthorized):
        await TokenVerifier(Jwks(key)).verify(token)


async def test_hs256_signed_with_public_key_material_is_rejected(key: SigningKey) -> None:
    # The classic confusion attack: an HMAC keyed with the verifier's public key.
    secret = base64.urlsafe_b64decode(key.public_jwk()["x"] + "==")
    signing_input = _b64({"alg": "HS256", "kid": key.kid}) + "." + _b64({"sub": "u", "exp": 2_000_000_000, "iat": 1})
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    token = signing_input + "." + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()
    with pytest.raises(Unauthorized):
        await TokenVerifier(Jwks(key)).verify(token)


async def test_an_unknown_kid_refreshes_the_jwks_at_most_once_per_interval(key: SigningKey) -> None:
    clock = FakeClock()
    jwks = Jwks(key)
    verifier = TokenVerifier(jwks, refresh_interval_s=30, clock=clock)
    stranger = TokenIssuer(SigningKey.generate(), clock=clock).issue("u", [])
    for _ in range(5):
        with pytest.raises(Unauthorized):
            await verifier.verify(stranger)
    assert jwks.fetches == 1
    clock.now += 31
    rotated = SigningKey.generate()
    jwks.keys.append(rotated)
    assert (await verifier.verify(TokenIssuer(rotated, clock=clock).issue("u2", []))).user_id == "u2"
    assert jwks.fetches == 2


@pytest.mark.parametrize("header", [None, "", "Basic abc", "Bearer ", "Bearer a.b.c"])
async def test_malformed_authorization_headers_are_rejected(key: SigningKey, header: str | None) -> None:
    with pytest.raises(Unauthorized):
        await TokenVerifier(Jwks(key)).verify_header(header)


def _signed(key: SigningKey, claims: dict[str, Any], header: dict[str, Any] | None = None) -> str:
    """A token signed with the real key: only what the case changes makes it invalid."""
    import jwt

    return jwt.encode(
        claims, key.private_key(), algorithm="EdDSA", headers={"kid": key.kid} if header is None else header
    )


NOW = 1_800_000_000


def _claims(**changes: Any) -> dict[str, Any]:
    claims = {
        "iss": "meshop-users",
        "aud": "meshop",
        "sub": "u1",
        "iat": NOW,
        "nbf": NOW,
        "exp": NOW + 900,
        "jti": "j1",
    }
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


@pytest.mark.parametrize(
    ("case", "claims", "header"),
    [
        ("control: valid", _claims(), None),
        ("expired", _claims(exp=NOW - 60, iat=NOW - 960), None),
        ("nbf in the future", _claims(nbf=NOW + 3600), None),
        ("issued in the future", _claims(iat=NOW + 3600), None),
        ("wrong audience", _claims(aud="someone-else"), None),
        ("wrong issuer", _claims(iss="evil"), None),
        ("missing exp", _claims(exp=None), None),
        ("missing sub", _claims(sub=None), None),
        ("missing iat", _claims(iat=None), None),
        ("missing jti", _claims(jti=None), None),
        ("exp not a number", _claims(exp="tomorrow"), None),
        ("unknown kid", _claims(), {"kid": "not-a-key"}),
        ("kid with path traversal", _claims(), {"kid": "../../../../etc/passwd"}),
        ("kid with SQL injection", _claims(), {"kid": "x' OR '1'='1"}),
        ("no kid", _claims(), {}),
        ("roles not a list", _claims(roles="admin"), None),
    ],
)
async def test_jwt_attack_suite(
    key: SigningKey, case: str, claims: dict[str, Any], header: dict[str, Any] | None
) -> None:
    verifier = TokenVerifier(Jwks(key), clock=FakeClock(NOW))
    token = _signed(key, claims, header)
    if case.startswith("control"):
        assert (await verifier.verify(token)).user_id == "u1"
        return
    with pytest.raises(Unauthorized):
        await verifier.verify(token)


async def test_a_revoked_token_is_refused_even_when_cached(key: SigningKey) -> None:
    revoked: set[str] = set()
    verifier = TokenVerifier(Jwks(key), clock=FakeClock(NOW), revoked=revoked)
    token = _signed(key, _claims())
    identity = await verifier.verify(token)  # now cached
    assert identity.token_id == "j1"
    revoked.add("j1")
    with pytest.raises(Unauthorized, match="revoked"):
        await verifier.verify(token)
    with pytest.raises(Unauthorized, match="revoked"):
        await TokenVerifier(Jwks(key), clock=FakeClock(NOW), revoked=revoked).verify(token)
