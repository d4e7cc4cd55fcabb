"""How a process logs in to NATS: its user, its own reply inbox, and TLS.

A shop's NATS server admits only known users, each with publish/subscribe permissions
limited to the subjects its process uses (`meshop.runtime.nats_users` writes them). A
process reads its credentials from one file (`MESHOP_NATS_CREDENTIALS_FILE`, mode 0600:
`meshop up` writes one per process under the data dir; in production a mounted secret)
holding `{"user", "password", "inbox_prefix"}`. The inbox prefix matters as much as the
password: every reply to this process's requests (RPC answers, JetStream acknowledgements,
KV watch deliveries) arrives under `<inbox_prefix>.>`, the only inbox its user may read,
so no process reads another's replies.

Without a credentials file a process connects anonymously, as to a server that has no
authorization (a developer's own `nats-server`, the test suite's).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from meshop.mesh.errors import ConfigError

__all__ = ["LIVENESS", "USERS_DIR", "NatsCredentials", "NatsLogin", "credentials_file", "servers"]


#: Where `meshop up` keeps each NATS user's credentials, under its data dir.
USERS_DIR = "nats-users"


#: For `nats.connect` of a long-lived connection: a server that stops answering (a cut link
#: resets nothing) is given up after two unanswered pings two seconds apart, and the client
#: moves to another server of the cluster. nats-py's defaults (two pings two minutes apart)
#: kept a process on a dead server for four minutes, its registry heartbeat included.
LIVENESS: dict[str, Any] = {"ping_interval": 2, "max_outstanding_pings": 2}


def servers(url: str) -> list[str]:
    """The servers of `MESHOP_NATS_URL`: one URL, or a cluster's, comma-separated.

    Given every server, a client connects to whichever answers first and fails over to
    the others (nats-py also learns a cluster's other members from the one it reached,
    but only once it reached one).
    """
    return [u.strip() for u in url.split(",") if u.strip()]


def credentials_file(data_dir: Path, user: str) -> Path:
    """The credentials file of `user` in the data dir of `meshop up` (kept light: the CLI reads it)."""
    return data_dir / USERS_DIR / f"{user}.json"


class NatsCredentials(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One NATS user: what its credentials file holds."""

    user: str
    password: str
    #: Replies to this user's requests arrive under `<inbox_prefix>.>` (`_INBOX_<user>`).
    inbox_prefix: str

    def __repr__(self) -> str:  # never print the password
        return f"NatsCredentials(user={self.user!r}, password=***, inbox_prefix={self.inbox_prefix!r})"

    @classmethod
    def read(cls, path: Path) -> NatsCredentials:
        """The credentials in `path`; a missing or malformed file is a ConfigError naming it."""
        try:
            return msgspec.json.decode(path.read_bytes(), type=cls)
        except (OSError, msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise ConfigError(f"NATS credentials file {path}: {exc}") from None


@dataclass(frozen=True, slots=True)
class NatsLogin:
    """The options of `nats.connect` that identify a process and secure its connection.

    `tls_ca_file` is the CA that signed the server's certificate: the connection is then
    TLS, verified against it, even on a `nats://` URL (nats-py upgrades when the server
    requires TLS). Processes prove who they are by password, not by client certificate.
    """

    credentials: NatsCredentials | None = None
    tls_ca_file: Path | None = None

    @classmethod
    def load(cls, credentials_file: Path | None, *, tls_ca_file: Path | None = None) -> NatsLogin:
        """Read `credentials_file` (None: anonymous) and keep the CA to verify the server with."""
        credentials = NatsCredentials.read(credentials_file) if credentials_file is not None else None
        return cls(credentials, tls_ca_file)

    def options(self) -> dict[str, Any]:
        """Keyword arguments for `nats.connect` (none for an anonymous, plain connection)."""
        options: dict[str, Any] = {}
        if self.credentials is not None:
            options["user"] = self.credentials.user
            options["password"] = self.credentials.password
            options["inbox_prefix"] = self.credentials.inbox_prefix
        if self.tls_ca_file is not None:
            options["tls"] = ssl.create_default_context(cafile=str(self.tls_ca_file))
        return options
