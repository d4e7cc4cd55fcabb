"""Service identity: short-lived service certificates and audience-bound call tokens.

Root of trust: an Ed25519 root key pair held by the issuer (`meshop up`'s supervisor on one
machine; in production a job that runs `provision` with the root key and writes each
service's credential as a file or Secret). Callees trust the root's public half through a
trust bundle that may hold several roots, so a new root is trusted before it signs anything
and rotating it loses no call.

A service's credential is a fresh Ed25519 key pair plus a *certificate*: the service name,
the public key and an expiry (≤ 1 h), signed by the root. With it a caller mints, per
callee, a *token* (issuer, audience = the callee's service, expiry of minutes, never past the
certificate's) and sends both in one header, `meshop-identity: <certificate>.<token>`, each
part `<payload>.<signature>` in base64url. The callee checks the certificate against its
bundle, the token against the certificate's key, the audience and both expiries, and
caches the result by the header's string until the token expires: a hot caller costs one
dict lookup at each end (docs/decisions/0020).

Credentials are renewed in place (the issuer rewrites the file, atomically, at half its
lifetime); each process re-reads the files when they change (`CredentialFiles`), so a
renewal needs no restart and fails no call.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import msgspec
import structlog
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from meshop.mesh.errors import ConfigError, Unauthorized
from meshop.mesh.headers import IDENTITY_HEADER

log = structlog.get_logger("meshop.identity")

#: The longest a service certificate may live (issue 22: credentials are short-lived).
MAX_CERTIFICATE_LIFETIME_S = 3600.0
#: A call token's lifetime (capped by its certificate's expiry).
TOKEN_LIFETIME_S = 300.0
#: Clocks of different hosts disagree a little: an expiry is honoured this much late.
LEEWAY_S = 5.0
#: Verified headers a callee remembers (a few per caller process and renewal).
CACHE_SIZE = 4096
ROOT_FILE = "root.json"
#: A rotated-in root, trusted already, that signs only from its `use_after` on.
NEXT_ROOT_FILE = "root.next.json"
TRUST_FILE = "trust.json"
#: How long a new root is only trusted before it signs: every process must have re-read the
#: bundle by then (they look every 2 s; a Secret may take a minute to reach a pod).
ROOT_TRUST_DELAY_S = 120.0

Clock = Callable[[], float]


class _Certificate(msgspec.Struct, frozen=True):
    svc: str
    key: str  # the service's raw Ed25519 public key, base64url
    root: str  # the kid of the root that signed it
    exp: int


class _Token(msgspec.Struct, frozen=True):
    iss: str
    aud: str
    exp: int


class _Root(msgspec.Struct, frozen=True):
    kid: str
    key: str  # raw private key, base64url
    use_after: int = 0  # a rotated-in root signs from then on


class _Trusted(msgspec.Struct, frozen=True):
    kid: str
    key: str  # raw public key, base64url


class _Bundle(msgspec.Struct, frozen=True):
    roots: list[_Trusted]


class _CredentialFile(msgspec.Struct, frozen=True):
    service: str
    certificate: str
    key: str  # raw private key, base64url
    expires_at: int


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _raw_private(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())


def _kid(public: Ed25519PublicKey) -> str:
    return hashlib.sha256(_raw_public(public)).hexdigest()[:16]


def _signed(payload: bytes, key: Ed25519PrivateKey) -> str:
    return f"{_b64(payload)}.{_b64(key.sign(payload))}"


def write_secret(path: Path, data: bytes) -> None:
    """Write `data` to `path` with mode 0600, atomically: a reader sees the old or the new file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(temporary, 0o600)
    os.replace(temporary, path)


class TrustBundle:
    """The roots a callee trusts, by key id."""

    def __init__(self, roots: dict[str, Ed25519PublicKey]) -> None:
        self.roots = roots

    @classmethod
    def read(cls, path: Path) -> TrustBundle:
        try:
            bundle = msgspec.json.decode(path.read_bytes(), type=_Bundle)
        except (OSError, msgspec.DecodeError) as exc:
            raise ConfigError(f"cannot read the trust bundle {path}: {exc}") from None
        return cls({r.kid: Ed25519PublicKey.from_public_bytes(_unb64(r.key)) for r in bundle.roots})


class Credential:
    """One service's current certificate and private key: what a caller signs tokens with."""

    def __init__(self, service: str, certificate: str, key: Ed25519PrivateKey, expires_at: float) -> None:
        self.service = service
        self.certificate = certificate
        self.key = key
        self.expires_at = expires_at

    @classmethod
    def read(cls, path: Path) -> Credential:
        try:
            raw = msgspec.json.decode(path.read_bytes(), type=_CredentialFile)
        except (OSError, msgspec.DecodeError) as exc:
            raise ConfigError(
                f"cannot read the service credential {path} ({exc}); an issuer writes it: `meshop up` does, "
                "`meshop run --issue-identity` issues it from the root in the same directory"
            ) from None
        key = Ed25519PrivateKey.from_private_bytes(_unb64(raw.key))
        return cls(raw.service, raw.certificate, key, float(raw.expires_at))


class Issuer:
    """The root of trust: signs service certificates."""

    def __init__(self, key: Ed25519PrivateKey, *, clock: Clock = time.time) -> None:
        self.key = key
        self.kid = _kid(key.public_key())
        self._clock = clock

    @classmethod
    def generate(cls, *, clock: Clock = time.time) -> Issuer:
        return cls(Ed25519PrivateKey.generate(), clock=clock)

    def trusted(self) -> _Trusted:
        return _Trusted(self.kid, _b64(_raw_public(self.key.public_key())))

    def issue(self, service: str, *, lifetime_s: float = MAX_CERTIFICATE_LIFETIME_S) -> Credential:
        """A new key pair for `service` and its certificate, valid `lifetime_s` from now."""
        if not 0 < lifetime_s <= MAX_CERTIFICATE_LIFETIME_S:
            raise ConfigError(f"a service certificate lives at most {MAX_CERTIFICATE_LIFETIME_S:g}s; got {lifetime_s}")
        key = Ed25519PrivateKey.generate()
        expires_at = int(self._clock() + lifetime_s)
        payload = msgspec.json.encode(_Certificate(service, _b64(_raw_public(key.public_key())), self.kid, expires_at))
        return Credential(service, _signed(payload, self.key), key, float(expires_at))


async def renew_forever(
    directory: Path, services: Iterable[str], *, lifetime_s: float = MAX_CERTIFICATE_LIFETIME_S
) -> None:
    """Reissue every service's credential at a third of its lifetime (the issuer's loop; cancel to stop).

    A third, not a half: one failed renewal still leaves a third of the lifetime for the next.
    """
    wanted = list(services)
    while True:
        await asyncio.sleep(lifetime_s / 3)
        try:
            provision(directory, wanted, lifetime_s=lifetime_s)
        except (OSError, ConfigError) as exc:  # tried again a third of the lifetime later
            log.error("service credentials not renewed", error=repr(exc))


def credential_path(directory: Path, service: str) -> Path:
    return directory / "services" / f"{service}.json"


def provision(
    directory: Path,
    services: Iterable[str],
    *,
    lifetime_s: float = MAX_CERTIFICATE_LIFETIME_S,
    clock: Clock = time.time,
) -> None:
    """Create the root (once) and the trust bundle, and (re)issue each service's credential.

    The one code path that makes identity keys: `meshop up` (and its renewals), `meshop run`,
    the chaos harness (through `meshop up`) and the test fixtures. Every key file is 0600.
    """
    issuer = load_issuer(directory, clock=clock)
    bundle_path = directory / TRUST_FILE
    if not bundle_path.exists():
        write_secret(bundle_path, msgspec.json.encode(_Bundle([issuer.trusted()])))
    for service in services:
        credential = issuer.issue(service, lifetime_s=lifetime_s)
        raw = _CredentialFile(
            service, credential.certificate, _b64(_raw_private(credential.key)), int(credential.expires_at)
        )
        write_secret(credential_path(directory, service), msgspec.json.encode(raw))


def load_issuer(directory: Path, *, clock: Clock = time.time) -> Issuer:
    """The root in `directory` that signs now, created (0600) when there is none yet.

    A rotated-in root (`rotate_root`) takes over once its `use_after` has passed.
    """
    path = directory / ROOT_FILE
    following = directory / NEXT_ROOT_FILE
    if following.exists() and msgspec.json.decode(following.read_bytes(), type=_Root).use_after <= clock():
        os.replace(following, path)
    if path.exists():
        root = msgspec.json.decode(path.read_bytes(), type=_Root)
        return Issuer(Ed25519PrivateKey.from_private_bytes(_unb64(root.key)), clock=clock)
    issuer = Issuer.generate(clock=clock)
    write_secret(path, msgspec.json.encode(_Root(issuer.kid, _b64(_raw_private(issuer.key)))))
    return issuer


def rotate_root(directory: Path, *, delay_s: float = ROOT_TRUST_DELAY_S, clock: Clock = time.time) -> Issuer:
    """A new root, trusted beside the old ones at once, signing renewals only `delay_s` later.

    So no process meets a certificate of a root it does not trust yet; certificates of the
    old root stay valid until they expire (≤ 1 h): drop the old root from the bundle after.
    """
    bundle_path = directory / TRUST_FILE
    old = msgspec.json.decode(bundle_path.read_bytes(), type=_Bundle).roots if bundle_path.exists() else []
    issuer = Issuer.generate(clock=clock)
    write_secret(bundle_path, msgspec.json.encode(_Bundle([*old, issuer.trusted()])))
    following = _Root(issuer.kid, _b64(_raw_private(issuer.key)), use_after=int(clock() + delay_s))
    write_secret(directory / NEXT_ROOT_FILE, msgspec.json.encode(following))
    return issuer


class TokenMinter:
    """The caller's side: the identity header for each callee, minted once per few minutes."""

    def __init__(self, credential: Credential, *, clock: Clock = time.time) -> None:
        self._credential = credential
        self._clock = clock
        #: callee -> (header, when to mint a new one)
        self._headers: dict[str, tuple[str, float]] = {}

    @property
    def service(self) -> str:
        return self._credential.service

    def use(self, credential: Credential) -> None:
        """Switch to a renewed credential: the next call to each callee mints with it."""
        self._credential = credential
        self._headers = {}

    def needs_renewal(self, lifetime_s: float) -> bool:
        """Whether the credential is past half of `lifetime_s` (when an issuer renews it)."""
        return self._clock() >= self._credential.expires_at - lifetime_s / 2

    def header(self, callee: str) -> str:
        now = self._clock()
        cached = self._headers.get(callee)
        if cached is not None and now < cached[1]:
            return cached[0]
        return self._mint(callee, now)

    def _mint(self, callee: str, now: float) -> str:
        credential = self._credential
        expires = min(now + TOKEN_LIFETIME_S, credential.expires_at)
        token = _signed(msgspec.json.encode(_Token(credential.service, callee, int(expires))), credential.key)
        header = f"{credential.certificate}.{token}"
        # Renewed at half its life: a token is never sent close to its expiry.
        self._headers[callee] = (header, now + (expires - now) / 2)
        return header


class CallerVerifier:
    """The callee's side: which service a `meshop-identity` header proves, or 401."""

    def __init__(self, service: str, bundle: TrustBundle, *, clock: Clock = time.time) -> None:
        self.service = service
        self._bundle = bundle
        self._clock = clock
        #: header -> (caller, token expiry)
        self._verified: dict[str, tuple[str, float]] = {}
        #: certificate -> its claims and key: a caller's next token costs one signature check, not two
        self._certificates: dict[str, tuple[_Certificate, Ed25519PublicKey]] = {}

    def trust(self, bundle: TrustBundle) -> None:
        """Use a changed bundle (a root added or retired); what was verified is checked again."""
        self._bundle = bundle
        self._verified = {}
        self._certificates = {}

    def caller(self, header: str | None) -> str:
        """The calling service's name; `Unauthorized` when the header proves nothing."""
        if header is None:
            raise Unauthorized(f"this operation needs a service identity ({IDENTITY_HEADER})")
        now = self._clock()
        known = self._verified.get(header)
        if known is not None and now < known[1] + LEEWAY_S:
            return known[0]
        caller, expires = self._verify(header, now)
        if len(self._verified) >= CACHE_SIZE:
            self._verified = {}
        self._verified[header] = (caller, expires)
        return caller

    def _verify(self, header: str, now: float) -> tuple[str, float]:
        parts = header.split(".")
        if len(parts) != 4:
            raise Unauthorized("malformed service identity")
        try:
            cert, key = self._certificate(parts[0], parts[1])
            token_payload = _unb64(parts[2])
            token = msgspec.json.decode(token_payload, type=_Token)
            key.verify(_unb64(parts[3]), token_payload)
        except (ValueError, msgspec.DecodeError, InvalidSignature):
            raise Unauthorized("invalid service identity") from None
        if cert.exp + LEEWAY_S <= now:
            raise Unauthorized("service certificate expired")
        if token.iss != cert.svc:
            raise Unauthorized("service token not issued by its certificate's service")
        if token.aud != self.service:
            raise Unauthorized(f"service token is for {token.aud!r}, not {self.service!r}")
        if token.exp + LEEWAY_S <= now:
            raise Unauthorized("service token expired")
        return cert.svc, float(min(token.exp, cert.exp))

    def _certificate(self, payload: str, signature: str) -> tuple[_Certificate, Ed25519PublicKey]:
        """The claims and key of a certificate a trusted root signed (raises otherwise)."""
        signed = f"{payload}.{signature}"
        known = self._certificates.get(signed)
        if known is not None:
            return known
        raw = _unb64(payload)
        cert = msgspec.json.decode(raw, type=_Certificate)
        root = self._bundle.roots.get(cert.root)
        if root is None:
            raise Unauthorized("service certificate signed by an untrusted root")
        root.verify(_unb64(signature), raw)
        checked = (cert, Ed25519PublicKey.from_public_bytes(_unb64(cert.key)))
        if len(self._certificates) >= CACHE_SIZE:
            self._certificates = {}
        self._certificates[signed] = checked
        return checked


class CredentialFiles:
    """A process's credential and trust bundle, re-read when their files change (renewal)."""

    def __init__(self, directory: Path, service: str, *, clock: Clock = time.time) -> None:
        self.directory = directory
        self.service = service
        self._stamps = self._stat()
        self.minter = TokenMinter(Credential.read(credential_path(directory, service)), clock=clock)
        self.verifier = CallerVerifier(service, TrustBundle.read(directory / TRUST_FILE), clock=clock)

    def _stat(self) -> tuple[tuple[int, int], tuple[int, int]]:
        return (
            _mtime(credential_path(self.directory, self.service)),
            _mtime(self.directory / TRUST_FILE),
        )

    def reload_if_changed(self) -> bool:
        """Re-read what changed; True when something did. A half-written or bad file is kept out."""
        stamps = self._stat()
        if stamps == self._stamps:
            return False
        try:
            if stamps[1] != self._stamps[1]:
                self.verifier.trust(TrustBundle.read(self.directory / TRUST_FILE))
            if stamps[0] != self._stamps[0]:
                self.minter.use(Credential.read(credential_path(self.directory, self.service)))
        except (ConfigError, ValueError) as exc:
            log.warning("service credential not reloaded", error=str(exc))
            return False
        self._stamps = stamps
        log.info("service credential reloaded", service=self.service)
        return True


def _mtime(path: Path) -> tuple[int, int]:
    """What changes when an issuer replaces the file (a rename: a new inode, whatever the clock)."""
    try:
        found = path.stat()
    except OSError:
        return (0, 0)
    return (found.st_ino, found.st_mtime_ns)
