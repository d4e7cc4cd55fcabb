"""The JWT attack suite against a running gateway: every forgery is a 401 problem+json, and
for the reason its case names.

Each forgery starts from a genuine token the users service issued (its complete claim set,
its header) and changes only the attacked dimension. Forgeries that need a valid signature
(expired, future `nbf`, wrong `aud`/`iss`, missing `exp`, odd `kid`s) are signed with the
users service's own signing key, read from its database in the shop's data dir: the gateway
trusts that key, so only the claim or header check can be what refuses them. The controls
show the harness's key is the trusted one.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import sqlite3
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from meshop.mesh.security.tokens import SigningKey
from tests.e2e.conftest import Shop

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


@dataclass(frozen=True)
class Genuine:
    """A real access token from the users service, and the key that signed it."""

    token: str
    key: SigningKey
    claims: dict[str, Any]

    def signed(self, claims: dict[str, Any], kid: str | None = None) -> str:
        """`claims` signed with the users service's own key, exactly as its issuer signs."""
        return jwt.encode(claims, self.key.private_key(), algorithm="EdDSA", headers={"kid": kid or self.key.kid})


def _post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"content-type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        answer: dict[str, Any] = json.loads(resp.read())
        return answer


def _get_me(shop: Shop, token: str) -> tuple[int, str, dict[str, Any]]:
    request = urllib.request.Request(shop.url + "/api/users/me", headers={"authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, resp.headers.get("content-type", ""), json.loads(resp.read())
    except urllib.error.HTTPError as refused:
        with refused:
            return refused.code, refused.headers.get("content-type", ""), json.loads(refused.read())


@pytest.fixture(scope="module")
def genuine(shop: Shop) -> Genuine:
    email = f"{uuid.uuid4().hex[:10]}@example.com"
    credentials = {"email": email, "password": "correct horse"}
    _post(shop.url + "/api/users/register", {**credentials, "name": "Victim"})
    token = _post(shop.url + "/api/users/login", credentials)["access_token"]
    kid = jwt.get_unverified_header(token)["kid"]
    db = f"file:{shop.data_dir / 'users.db'}?mode=ro"
    with closing(sqlite3.connect(db, uri=True)) as conn:
        (private_pem,) = conn.execute("SELECT private_pem FROM signing_keys WHERE kid = ?", (kid,)).fetchone()
    claims = jwt.decode(token, options={"verify_signature": False})
    return Genuine(token=token, key=SigningKey(kid=kid, private_pem=private_pem.encode()), claims=claims)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(segment: str) -> dict[str, Any]:
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    return decoded


def _with_alg(g: Genuine, alg: str) -> str:
    """The genuine header with another `alg` (encoded as PyJWT does), the genuine payload byte for byte."""
    header, payload, _ = g.token.split(".")
    changed = {**_unb64(header), "alg": alg}
    return _b64(json.dumps(changed, separators=(",", ":"), sort_keys=True).encode()) + "." + payload


def _hs256_with_public_pem(g: Genuine) -> str:
    # The confusion attack: HMAC keyed with the public key's PEM, as a verifier that read
    # `alg` from the token would key it.
    secret = (
        g.key.private_key()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    signing_input = _with_alg(g, "HS256")
    return signing_input + "." + _b64(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest())


def _tampered(g: Genuine, **edit: Any) -> str:
    header, payload, signature = g.token.split(".")
    evil = _b64(json.dumps({**_unb64(payload), **edit}, separators=(",", ":")).encode())
    return f"{header}.{evil}.{signature}"


def _claims(g: Genuine, **changes: Any) -> dict[str, Any]:
    claims = {**g.claims, **changes}
    return {k: v for k, v in claims.items() if v is not None}


def _expired(g: Genuine) -> str:
    # Issued one lifetime and a minute ago: past exp and the verifier's leeway.
    back = g.claims["exp"] - g.claims["iat"] + 60
    return g.signed(_claims(g, iat=g.claims["iat"] - back, nbf=g.claims["nbf"] - back, exp=g.claims["exp"] - back))


Forge = Callable[[Genuine], str]

ATTACKS: list[Any] = [
    pytest.param(lambda g: _with_alg(g, "none") + ".", "algorithm 'none' is not allowed", id="alg none"),
    pytest.param(_hs256_with_public_pem, "algorithm 'HS256' is not allowed", id="HS256 keyed with the public key PEM"),
    pytest.param(
        lambda g: jwt.encode(
            g.claims, SigningKey.generate().private_key(), algorithm="EdDSA", headers={"kid": g.key.kid}
        ),
        "Signature verification failed",
        id="another key under the real kid",
    ),
    pytest.param(lambda g: _tampered(g, sub=uuid.uuid4().hex), "Signature verification failed", id="tampered sub"),
    pytest.param(lambda g: _tampered(g, roles=["admin"]), "Signature verification failed", id="tampered roles"),
    pytest.param(_expired, "expired", id="expired"),
    pytest.param(lambda g: g.signed(_claims(g, nbf=g.claims["iat"] + 3600)), "not valid yet", id="nbf in the future"),
    pytest.param(lambda g: g.signed(_claims(g, aud="someone-else")), "Audience doesn't match", id="wrong aud"),
    pytest.param(lambda g: g.signed(_claims(g, iss="evil-issuer")), "Invalid issuer", id="wrong iss"),
    pytest.param(lambda g: g.signed(_claims(g, exp=None)), 'missing the "exp" claim', id="missing exp"),
    pytest.param(lambda g: g.signed(g.claims, kid=uuid.uuid4().hex[:16]), "unknown signing key", id="unknown kid"),
    pytest.param(lambda g: g.signed(g.claims, kid="../../etc/passwd"), "unknown signing key", id="kid path traversal"),
    pytest.param(lambda g: g.signed(g.claims, kid="' OR 1=1 --"), "unknown signing key", id="kid SQL injection"),
    pytest.param(lambda g: "garbage", "malformed token", id="not a token"),
]


@pytest.mark.parametrize(
    "forge",
    [
        pytest.param(lambda g: g.token, id="the genuine token"),
        pytest.param(lambda g: g.signed(g.claims), id="its claims re-signed with the key from the users db"),
    ],
)
def test_control_the_genuine_token_and_the_harness_key_are_accepted(shop: Shop, genuine: Genuine, forge: Forge) -> None:
    token = forge(genuine)
    assert token == genuine.token  # the harness signs exactly as the users service does
    status, _, body = _get_me(shop, token)
    assert status == 200, body
    assert body["id"] == genuine.claims["sub"]


@pytest.mark.parametrize(("forge", "reason"), ATTACKS)
def test_a_forged_token_is_refused_with_401_problem_json(
    shop: Shop, genuine: Genuine, forge: Forge, reason: str
) -> None:
    status, content_type, body = _get_me(shop, forge(genuine))
    assert status == 401, body
    assert content_type == "application/problem+json"
    assert body["status"] == 401
    assert reason in body["detail"]  # refused by the check the case names, not another one
