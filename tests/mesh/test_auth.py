"""Identity tokens: issuing, verifying, rejecting forgeries, JWKS refresh with a fake clock."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import re
from collections.abc import Callable
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from meshop.mesh.errors import ServiceUnavailable, TransportError, Unauthorized
from meshop.mesh.security.tokens import SigningKey, TokenIssuer, TokenVerifier
from meshop.mesh.testing import FakeClock


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
    clock = FakeClock(1_800_000_000.0)
    token = TokenIssuer(key, clock=clock).issue("user-1", ["customer"])
    identity = await TokenVerifier(Jwks(key), clock=clock).verify(token)
    assert identity.user_id == "user-1"
    assert identity.roles == frozenset({"customer"})
    assert not identity.is_admin


async def test_an_expired_token_is_rejected(key: SigningKey) -> None:
    clock = FakeClock(1_800_000_000.0)
    token = TokenIssuer(key, ttl_s=900, clock=clock).issue("u", [])
    verifier = TokenVerifier(Jwks(key), clock=clock)
    await verifier.verify(token)
    clock.now += 900 + 6  # past expiry and leeway: even the claims cache refuses it
    with pytest.raises(Unauthorized, match="expired"):
        await verifier.verify(token)


NOW = 1_800_000_000


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(segment: str) -> dict[str, Any]:
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    return decoded


def _segment(value: dict[str, Any], *, sort_keys: bool = False) -> str:
    """A JWT segment encoded exactly as PyJWT encodes one (compact JSON; the header's keys sorted)."""
    return _b64(json.dumps(value, separators=(",", ":"), sort_keys=sort_keys).encode())


def _genuine(key: SigningKey, clock: FakeClock | None = None) -> str:
    """A real token, as the users service issues it: every forgery below starts from one."""
    return TokenIssuer(key, clock=clock or FakeClock(NOW)).issue("u1", ["customer"])


def _verifier(key: SigningKey) -> TokenVerifier:
    return TokenVerifier(Jwks(key), clock=FakeClock(NOW))


async def test_the_genuine_token_the_forgeries_start_from_verifies(key: SigningKey) -> None:
    token = _genuine(key)
    header, payload, _ = token.split(".")
    assert _unb64(header) == {"alg": "EdDSA", "kid": key.kid, "typ": "JWT"}
    assert set(_unb64(payload)) == {"iss", "aud", "sub", "roles", "iat", "nbf", "exp", "jti"}
    assert _segment(_unb64(header), sort_keys=True) == header  # re-encoding is faithful: only edits differ
    assert _segment(_unb64(payload)) == payload
    assert (await _verifier(key).verify(token)).user_id == "u1"


def _with_alg(token: str, alg: str) -> str:
    """The genuine token's header with another `alg`, and its payload byte for byte (no signature)."""
    header, payload, _ = token.split(".")
    return _segment({**_unb64(header), "alg": alg}, sort_keys=True) + "." + payload


async def test_alg_none_is_rejected_for_its_algorithm(key: SigningKey) -> None:
    forged = _with_alg(_genuine(key), "none") + "."
    with pytest.raises(Unauthorized, match="algorithm 'none' is not allowed"):
        await _verifier(key).verify(forged)


def _public_pem(key: SigningKey) -> bytes:
    return (
        key.private_key()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


@pytest.mark.parametrize(
    "secret_of",
    [
        pytest.param(_public_pem, id="public key PEM"),
        pytest.param(lambda k: base64.urlsafe_b64decode(k.public_jwk()["x"] + "=="), id="raw public key"),
    ],
)
async def test_hs256_keyed_with_the_public_key_is_rejected_for_its_algorithm(
    key: SigningKey, secret_of: Callable[[SigningKey], bytes]
) -> None:
    # The classic confusion attack: an HMAC keyed with what the verifier publishes.
    signing_input = _with_alg(_genuine(key), "HS256")
    mac = hmac.new(secret_of(key), signing_input.encode(), hashlib.sha256).digest()
    with pytest.raises(Unauthorized, match="algorithm 'HS256' is not allowed"):
        await _verifier(key).verify(signing_input + "." + _b64(mac))


@pytest.mark.parametrize(
    "edit",
    [
        pytest.param({"roles": ["admin"]}, id="roles"),
        pytest.param({"sub": "someone-else"}, id="sub"),
    ],
)
async def test_a_tampered_payload_is_rejected_for_its_signature(key: SigningKey, edit: dict[str, Any]) -> None:
    header, payload, signature = _genuine(key).split(".")
    evil = _segment({**_unb64(payload), **edit})
    with pytest.raises(Unauthorized, match="Signature verification failed"):
        await _verifier(key).verify(f"{header}.{evil}.{signature}")


async def test_a_token_signed_by_another_key_with_a_known_kid_is_rejected_for_its_signature(
    key: SigningKey,
) -> None:
    other = SigningKey(kid=key.kid, private_pem=SigningKey.generate().private_pem)
    with pytest.raises(Unauthorized, match="Signature verification failed"):
        await _verifier(key).verify(_genuine(other))


async def test_an_unknown_kid_refreshes_the_jwks_at_most_once_per_interval(key: SigningKey) -> None:
    clock = FakeClock(1_800_000_000.0)
    jwks = Jwks(key)
    verifier = TokenVerifier(jwks, refresh_interval_s=30, clock=clock)
    stranger = TokenIssuer(SigningKey.generate(), clock=clock).issue("u", [])
    for _ in range(5):
        with pytest.raises(Unauthorized, match="unknown signing key"):
            await verifier.verify(stranger)
    assert jwks.fetches == 1
    clock.now += 31
    rotated = SigningKey.generate()
    jwks.keys.append(rotated)
    assert (await verifier.verify(TokenIssuer(rotated, clock=clock).issue("u2", []))).user_id == "u2"
    assert jwks.fetches == 2


class FlakyJwks(Jwks):
    """A JWKS whose fetches fail (the users service is down) while `down` is set."""

    def __init__(self, *keys: SigningKey) -> None:
        super().__init__(*keys)
        self.down = False

    async def __call__(self) -> dict[str, Any]:
        if self.down:
            self.fetches += 1
            raise TransportError("connection refused")
        return await super().__call__()


async def test_failed_refreshes_count_too_an_unknown_kid_while_users_is_down_tries_once_per_wait(
    key: SigningKey,
) -> None:
    clock = FakeClock(1_800_000_000.0)
    jwks = FlakyJwks(key)
    verifier = TokenVerifier(jwks, refresh_interval_s=30, retry_after_failure_s=15, clock=clock)
    assert (await verifier.verify(_genuine(key, clock))).user_id == "u1"  # keys fetched once
    assert jwks.fetches == 1
    jwks.down = True
    clock.now += 31
    stranger = TokenIssuer(SigningKey.generate(), clock=clock).issue("u", [])
    with pytest.raises(ServiceUnavailable):  # the one allowed try fails
        await verifier.verify(stranger)
    assert jwks.fetches == 2
    clock.now += 10  # within the wait after a failure: no fetch, the token cannot be verified
    with pytest.raises(Unauthorized, match="unknown signing key"):
        await verifier.verify(TokenIssuer(SigningKey.generate(), clock=clock).issue("u", []))
    assert jwks.fetches == 2
    assert (await verifier.verify(_genuine(key, clock))).user_id == "u1"  # known keys still verify
    clock.now += 6  # the wait after the failure is over: one more try
    with pytest.raises(ServiceUnavailable):
        await verifier.verify(stranger)
    assert jwks.fetches == 3


async def test_when_no_key_is_known_yet_requests_wait_for_the_next_try_one_fetch_a_second(
    key: SigningKey,
) -> None:
    """A process that starts before users: its requests wait for the next try (a second at most)."""
    clock = FakeClock(1_800_000_000.0)
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.now += seconds

    jwks = FlakyJwks(key)
    jwks.down = True
    verifier = TokenVerifier(jwks, refresh_interval_s=30, clock=clock, sleep=sleep)
    for fetches in (1, 2):
        with pytest.raises(ServiceUnavailable, match="signing keys are unavailable") as refused:
            await verifier.verify(_genuine(key, clock))
        assert jwks.fetches == fetches  # one try a second, however many requests
    assert slept == [1.0]
    assert refused.value.retry_after_s == 1
    jwks.down = False
    assert (await verifier.verify(_genuine(key, clock))).user_id == "u1"  # waited for the next try
    assert jwks.fetches == 3
    stranger = TokenIssuer(SigningKey.generate(), clock=clock).issue("u", [])
    clock.now += 5  # once keys are known, an unknown kid waits for the whole interval, and is refused
    with pytest.raises(Unauthorized, match="unknown signing key"):
        await verifier.verify(stranger)
    assert jwks.fetches == 3


async def test_requests_waiting_for_a_fetch_share_its_result(key: SigningKey) -> None:
    clock = FakeClock(1_800_000_000.0)
    gate = asyncio.Event()

    class SlowJwks(Jwks):
        async def __call__(self) -> dict[str, Any]:
            await gate.wait()
            return await super().__call__()

    jwks = SlowJwks(key)
    verifier = TokenVerifier(jwks, clock=clock)
    waiting = [asyncio.create_task(verifier.verify(_genuine(key, clock))) for _ in range(5)]
    await asyncio.sleep(0)
    gate.set()
    assert {identity.user_id for identity in await asyncio.gather(*waiting)} == {"u1"}
    assert jwks.fetches == 1


@pytest.mark.parametrize("header", [None, "", "Basic abc", "Bearer ", "Bearer a.b.c"])
async def test_malformed_authorization_headers_are_rejected(key: SigningKey, header: str | None) -> None:
    with pytest.raises(Unauthorized):
        await TokenVerifier(Jwks(key)).verify_header(header)


def _signed(key: SigningKey, claims: dict[str, Any], header: dict[str, Any] | None = None) -> str:
    """A token signed with the trusted key: only what the case changes makes it invalid."""
    return jwt.encode(
        claims, key.private_key(), algorithm="EdDSA", headers={"kid": key.kid} if header is None else header
    )


def _claims(**changes: Any) -> dict[str, Any]:
    """The claims of a genuine token issued at NOW (the users service's own issuer), with `changes`."""
    claims = jwt.decode(_genuine(SigningKey.generate()), options={"verify_signature": False})
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


@pytest.mark.parametrize(
    ("claims", "header", "reason"),
    [
        pytest.param(_claims(), None, None, id="control: valid"),
        pytest.param(_claims(exp=NOW - 60, iat=NOW - 960, nbf=NOW - 960), None, "expired", id="expired"),
        pytest.param(_claims(nbf=NOW + 3600), None, "not valid yet", id="nbf in the future"),
        pytest.param(_claims(iat=NOW + 3600), None, "issued in the future", id="issued in the future"),
        pytest.param(_claims(aud="someone-else"), None, "Audience doesn't match", id="wrong audience"),
        pytest.param(_claims(iss="evil"), None, "Invalid issuer", id="wrong issuer"),
        pytest.param(_claims(exp=None), None, 'missing the "exp" claim', id="missing exp"),
        pytest.param(_claims(sub=None), None, 'missing the "sub" claim', id="missing sub"),
        pytest.param(_claims(iat=None), None, 'missing the "iat" claim', id="missing iat"),
        pytest.param(_claims(jti=None), None, 'missing the "jti" claim', id="missing jti"),
        pytest.param(_claims(aud=None), None, 'missing the "aud" claim', id="missing aud"),
        pytest.param(_claims(iss=None), None, 'missing the "iss" claim', id="missing iss"),
        pytest.param(_claims(exp="tomorrow"), None, "exp is not a number", id="exp not a number"),
        pytest.param(_claims(), {"kid": "not-a-key"}, "unknown signing key", id="unknown kid"),
        pytest.param(_claims(), {"kid": "../../etc/passwd"}, "unknown signing key", id="kid path traversal"),
        pytest.param(_claims(), {"kid": "' OR 1=1 --"}, "unknown signing key", id="kid SQL injection"),
        pytest.param(_claims(), {"kid": "k" * 65}, "no usable key id", id="kid too long"),
        pytest.param(_claims(), {}, "no usable key id", id="no kid"),
        pytest.param(_claims(roles="admin"), None, "malformed roles", id="roles not a list"),
    ],
)
async def test_jwt_attack_suite(
    key: SigningKey, claims: dict[str, Any], header: dict[str, Any] | None, reason: str | None
) -> None:
    verifier = _verifier(key)
    token = _signed(key, claims, header)
    if reason is None:
        assert (await verifier.verify(token)).user_id == "u1"
        return
    with pytest.raises(Unauthorized, match=re.escape(reason)):
        await verifier.verify(token)


async def test_a_revoked_token_is_refused_even_when_cached(key: SigningKey) -> None:
    revoked: set[str] = set()
    verifier = TokenVerifier(Jwks(key), clock=FakeClock(NOW), revoked=revoked)
    token = _signed(key, _claims(jti="j1"))
    identity = await verifier.verify(token)  # now cached
    assert identity.token_id == "j1"
    revoked.add("j1")
    with pytest.raises(Unauthorized, match="revoked"):
        await verifier.verify(token)
    with pytest.raises(Unauthorized, match="revoked"):
        await TokenVerifier(Jwks(key), clock=FakeClock(NOW), revoked=revoked).verify(token)


async def test_a_hot_token_is_known_without_a_coroutine_until_it_expires_or_is_revoked(key: SigningKey) -> None:
    clock = FakeClock(1_800_000_000.0)
    revoked: set[str] = set()
    verifier = TokenVerifier(Jwks(key), clock=clock, revoked=revoked)
    token = TokenIssuer(key, ttl_s=900, clock=clock).issue("user-1", ["customer"])
    assert verifier.known(f"Bearer {token}") is None  # never verified: verify_header must run
    identity = await verifier.verify_header(f"Bearer {token}")
    assert verifier.known(f"Bearer {token}") is identity
    assert verifier.known(f"bearer {token}") is identity
    assert verifier.known(token) is None
    assert verifier.known(None) is None
    clock.now += 900 + 6  # past expiry and leeway
    assert verifier.known(f"Bearer {token}") is None
    clock.now -= 900 + 6
    revoked.add(identity.token_id)
    assert verifier.known(f"Bearer {token}") is None
