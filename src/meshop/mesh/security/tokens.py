"""Identity tokens: EdDSA JWTs issued by one service and verified everywhere else.

The algorithm list is fixed here, never read from a token. Keys are found by `kid` in a
JWKS; an unknown `kid` refreshes the JWKS at most once per `refresh_interval_s` after a
fetch, and once per `retry_after_failure_s` after a failed try, so a flood of unknown kids
while the users service is down costs one fetch per wait, not one per request.
Verified claims are cached until the token expires, so a hot token costs a dict lookup.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Container, Sequence
from dataclasses import KW_ONLY, dataclass
from typing import Any

import jwt
import structlog
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from jwt.algorithms import OKPAlgorithm

from meshop.mesh.errors import Forbidden, ServiceUnavailable, TransportError, Unauthorized

log = structlog.get_logger("meshop.auth")

ALGORITHMS: tuple[str, ...] = ("EdDSA",)
ISSUER = "meshop-users"
AUDIENCE = "meshop"

Clock = Callable[[], float]
JwksSource = Callable[[], Awaitable[dict[str, Any]]]


@dataclass(frozen=True, slots=True)
class Identity:
    """Who made a request, as proven by a verified token."""

    user_id: str
    roles: frozenset[str]
    token: str
    expires_at: float
    _: KW_ONLY
    #: The token's id (`jti`): what logging out revokes.
    token_id: str = ""

    @property
    def is_admin(self) -> bool:
        return "admin" in self.roles


@dataclass(frozen=True, slots=True)
class SigningKey:
    """An Ed25519 key pair with its key id."""

    kid: str
    private_pem: bytes

    @classmethod
    def generate(cls) -> SigningKey:
        pem = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return cls(kid=uuid.uuid4().hex[:16], private_pem=pem)

    def private_key(self) -> Ed25519PrivateKey:
        key = serialization.load_pem_private_key(self.private_pem, password=None)
        assert isinstance(key, Ed25519PrivateKey)
        return key

    def public_jwk(self) -> dict[str, Any]:
        jwk: dict[str, Any] = json.loads(OKPAlgorithm.to_jwk(self.private_key().public_key()))
        return {**jwk, "kid": self.kid, "alg": "EdDSA", "use": "sig"}


class TokenIssuer:
    """Signs short-lived access tokens with the current signing key."""

    def __init__(self, key: SigningKey, *, ttl_s: float = 900.0, clock: Clock = time.time) -> None:
        self._key = key
        self._private = key.private_key()
        self._ttl_s = ttl_s
        self._clock = clock

    @property
    def ttl_s(self) -> float:
        return self._ttl_s

    def issue(self, user_id: str, roles: Sequence[str]) -> str:
        now = int(self._clock())
        claims = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": user_id,
            "roles": list(roles),
            "iat": now,
            "nbf": now,
            "exp": now + int(self._ttl_s),
            "jti": uuid.uuid4().hex,
        }
        return jwt.encode(claims, self._private, algorithm="EdDSA", headers={"kid": self._key.kid})


class TokenVerifier:
    """Verifies bearer tokens against a JWKS, with an algorithm allow-list."""

    def __init__(
        self,
        jwks: JwksSource,
        *,
        refresh_interval_s: float = 30.0,
        retry_after_failure_s: float = 1.0,
        leeway_s: float = 5.0,
        cache_size: int = 10_000,
        clock: Clock = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        revoked: Container[str] = frozenset(),
    ) -> None:
        self._source = jwks
        self._sleep = sleep
        #: Fetches tried so far: a caller that waited for the lock uses the result of one made meanwhile.
        self._attempts = 0
        self._revoked = revoked
        self._keys: dict[str, Ed25519PublicKey] = {}
        self._refresh_interval_s = refresh_interval_s
        #: After a failed fetch (users down or starting), a sooner try than a whole interval.
        self._retry_after_failure_s = min(retry_after_failure_s, refresh_interval_s)
        #: When an unknown kid may cause the next fetch: an interval after a fetch, a failed try
        #: counting too (a shorter wait), so a down users service costs one try per wait, not one per request.
        self._next_attempt = float("-inf")
        self._fetched = False
        self._refresh_lock = asyncio.Lock()
        self._leeway_s = leeway_s
        self._cache: OrderedDict[str, Identity] = OrderedDict()
        self._cache_size = cache_size
        self._clock = clock

    def known(self, authorization: str | None) -> Identity | None:
        """The identity behind a bearer token verified before, still valid and not revoked.

        None when it must be verified (`verify_header`): no coroutine for a hot token.
        """
        if authorization is None or authorization[:7].lower() != "bearer ":
            return None
        cached = self._cache.get(authorization[7:].strip())
        if cached is None or cached.expires_at + self._leeway_s <= self._clock() or cached.token_id in self._revoked:
            return None
        return cached

    async def verify_header(self, authorization: str | None) -> Identity:
        """The identity behind an `Authorization: Bearer ...` header, or `Unauthorized`."""
        if not authorization:
            raise Unauthorized("missing bearer token")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("expected 'Authorization: Bearer <token>'")
        return await self.verify(token.strip())

    async def verify(self, token: str) -> Identity:
        now = self._clock()
        cached = self._cache.get(token)
        if cached is not None:
            if cached.expires_at + self._leeway_s > now:
                if cached.token_id in self._revoked:
                    raise Unauthorized("token revoked (logged out)")
                return cached
            del self._cache[token]
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthorized("malformed token") from None
        alg = header.get("alg")
        if alg not in ALGORITHMS:  # before any key lookup: `none` or HS256 never reach a JWKS fetch
            raise Unauthorized(f"invalid token: algorithm {str(alg)[:16]!r} is not allowed")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid or len(kid) > 64:
            raise Unauthorized("token has no usable key id")
        key = await self._key_for(kid)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=list(ALGORITHMS),
                audience=AUDIENCE,
                issuer=ISSUER,
                leeway=self._leeway_s,
                # Times are checked below against the injected clock.
                options={
                    "require": ["exp", "iat", "sub", "aud", "iss", "jti"],
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                },
            )
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"invalid token: {exc}") from None
        self._check_times(claims, now)
        roles = claims.get("roles", [])
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise Unauthorized("invalid token: malformed roles")
        identity = Identity(
            user_id=str(claims["sub"]),
            roles=frozenset(roles),
            token=token,
            expires_at=float(claims["exp"]),
            token_id=str(claims["jti"]),
        )
        if identity.token_id in self._revoked:
            raise Unauthorized("token revoked (logged out)")
        self._cache[token] = identity
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return identity

    def _check_times(self, claims: dict[str, Any], now: float) -> None:
        times = {name: claims.get(name) for name in ("exp", "iat", "nbf")}
        for name, value in times.items():
            if value is not None and (not isinstance(value, int | float) or isinstance(value, bool)):
                raise Unauthorized(f"invalid token: {name} is not a number")
        if float(claims["exp"]) + self._leeway_s <= now:
            raise Unauthorized("invalid token: expired")
        if claims.get("nbf") is not None and float(claims["nbf"]) - self._leeway_s > now:
            raise Unauthorized("invalid token: not valid yet")
        if float(claims["iat"]) - self._leeway_s > now:
            raise Unauthorized("invalid token: issued in the future")

    async def refresh_forever(self) -> None:
        """Re-read the JWKS every `refresh_interval_s`, so a rotated-in key is known before it signs."""
        while True:
            await asyncio.sleep(self._refresh_interval_s)
            try:
                async with self._refresh_lock:
                    await self._refresh()
            except Exception as exc:  # the users service may be restarting: keep the keys we have
                log.warning("JWKS refresh failed; keeping the current keys", error=repr(exc))

    async def _key_for(self, kid: str) -> Ed25519PublicKey:
        key = self._keys.get(kid)
        if key is not None:
            return key
        attempts = self._attempts
        async with self._refresh_lock:  # one fetch at a time; those waiting share its result
            key = self._keys.get(kid)
            if key is None and self._attempts == attempts:
                wait_s = self._next_attempt - self._clock()
                if wait_s > 0 and not self._fetched:
                    # No key known yet (users starting, or its first fetch failed): wait for
                    # the next try, a second at most, rather than refuse every token meanwhile.
                    await self._sleep(wait_s)
                    wait_s = 0.0
                if wait_s <= 0:
                    await self._refresh()
                    key = self._keys.get(kid)
            if key is None and not self._fetched:  # nothing can be verified yet
                raise ServiceUnavailable("signing keys are unavailable", retry_after_s=self._retry_after_failure_s)
        if key is None:
            raise Unauthorized("unknown signing key")
        return key

    async def _refresh(self) -> None:
        self._attempts += 1
        now = self._clock()
        self._next_attempt = now + self._retry_after_failure_s
        try:
            document = await self._source()
        except (TransportError, ServiceUnavailable) as exc:
            raise ServiceUnavailable("signing keys are unavailable", retry_after_s=self._retry_after_failure_s) from exc
        keys: dict[str, Ed25519PublicKey] = {}
        for jwk in document.get("keys", []):
            if jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519" or not isinstance(jwk.get("kid"), str):
                continue
            public = OKPAlgorithm.from_jwk(jwk)
            if isinstance(public, Ed25519PublicKey):
                keys[jwk["kid"]] = public
        self._keys = keys
        self._fetched = True
        self._next_attempt = now + self._refresh_interval_s


def require_role(identity: Identity, role: str) -> None:
    """Raise `Forbidden` unless the identity holds `role`."""
    if role not in identity.roles:
        raise Forbidden(f"role {role!r} required")
