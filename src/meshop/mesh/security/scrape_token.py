"""Who may read `/metrics`: the scrape token, loopback clients, or an admin's access token.

The scrape token is a long-lived random secret that grants `/metrics` (and the gateway's
instance list, `/_meshop/instances`, which monitoring reads too) and nothing else.
`meshop up` creates it once in `<data-dir>/scrape-token` (mode 0600); every process reads
it from the file `MESHOP_METRICS_TOKEN_FILE` names (in production a mounted Secret);
Prometheus presents it with `authorization: credentials_file:` and the console with each
scrape. It is compared in constant time. Nothing else looks at it: elsewhere it is not an
access token, so it is refused like any malformed one (401).

Loopback clients need no credential unless `MESHOP_METRICS_LOOPBACK=false` (a Prometheus
or `meshop status` beside `meshop up`); a remote client with an admin access token (15
minutes) is let in too, as before the scrape token existed.
"""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path

from starlette.requests import Request

from meshop.mesh.errors import ConfigError, Forbidden, ProblemError, Unauthorized
from meshop.mesh.security.loopback import from_loopback
from meshop.mesh.security.tokens import TokenVerifier

#: Its name in the data dir of `meshop up`.
FILENAME = "scrape-token"
#: What `MESHOP_METRICS_TOKEN_FILE` is checked as, in errors.
SETTING = "MESHOP_METRICS_TOKEN_FILE"
#: The shortest token accepted from a file: 32 characters (`create` writes 43, 256 random bits).
MIN_LENGTH = 32


def create(path: Path) -> Path:
    """Write a new random token to `path` (mode 0600) unless a file is there already."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_urlsafe(32) + "\n")
    return path


def load(path: Path) -> bytes:
    """The token in `path`; ConfigError (naming the setting) when it is missing or too short."""
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"invalid setting {SETTING}: cannot read {path}: {exc.strerror}") from None
    if len(token) < MIN_LENGTH or any(c.isspace() for c in token):
        raise ConfigError(f"invalid setting {SETTING}: {path} must hold one token of at least {MIN_LENGTH} characters")
    return token.encode()


class MetricsAccess:
    """Decides whether a request may read `/metrics`."""

    def __init__(self, *, token: bytes | None, loopback: bool = True) -> None:
        self._token = token
        self._loopback = loopback

    def is_scrape_token(self, authorization: str | None) -> bool:
        """True for `Bearer <the scrape token>` (compared in constant time)."""
        if self._token is None or authorization is None:
            return False
        scheme, _, presented = authorization.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(presented.strip().encode(), self._token)

    async def refusal(self, request: Request, verifier: TokenVerifier | None) -> ProblemError | None:
        """Why `request` may not read `/metrics`; None when it may."""
        authorization = request.headers.get("authorization")
        if self.is_scrape_token(authorization) or (self._loopback and from_loopback(request)):
            return None
        if verifier is None:
            if self._token is not None:
                return Unauthorized("metrics need the scrape token")
            return Forbidden("metrics are served to loopback clients only")
        try:
            identity = await verifier.verify_header(authorization)
        except ProblemError as exc:
            return exc
        if not identity.is_admin:
            return Forbidden("metrics need the scrape token or the admin role")
        return None
