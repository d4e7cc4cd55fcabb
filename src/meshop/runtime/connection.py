"""How the CLI reaches a running shop: its URLs from the data dir, and connections that fail at once.

`meshop up` writes `<data-dir>/nats.url` when it starts (and `gateway.url` once ready) and
removes them when it stops, but a shop that was killed leaves them behind, pointing at
ports where nothing (or something that is not NATS) listens: the files say where a shop
was, not that one runs. Every command that reads a shop over NATS connects through
`connected`: two quick attempts, no reconnecting, and nats-py's errors kept for the
message instead of logged with a traceback. Whatever keeps the shop from answering is a
`NoShopError` (see `unreachable`), the same "no running shop found" as a data dir without
the files. Each command logs in as its own NATS user (`login_of`: `status`, `events`, `chaos`),
with the credentials `meshop up` keeps in the data dir.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import nats
import nats.errors
from nats.aio.client import Client as NatsClient

from meshop.mesh.errors import ConfigError
from meshop.mesh.security.nats_auth import NatsLogin, credentials_file, servers
from meshop.mesh.service.settings import setting

__all__ = [
    "CONNECT_TIMEOUT_S",
    "NoShopError",
    "connected",
    "gateway_url_of",
    "login_of",
    "nats_url_of",
    "unreachable",
]

#: Seconds to wait for a server's greeting (loopback NATS sends it at once; a listener that
#: is not NATS may send nothing).
CONNECT_TIMEOUT_S = 2

_HINT = "is `meshop up` running?"


class NoShopError(ConfigError):
    """No shop answers where the data dir (or the URL given) says one runs."""


def nats_url_of(data_dir: Path) -> str:
    """The NATS URL the shop on `data_dir` wrote when it started."""
    try:
        return (data_dir / "nats.url").read_text().strip()
    except FileNotFoundError:
        raise NoShopError(f"no running shop found in {data_dir} (no nats.url); {_HINT}") from None


def gateway_url_of(data_dir: Path) -> str | None:
    """The gateway URL the shop on `data_dir` wrote once it was ready (None before, or after it stopped)."""
    try:
        return (data_dir / "gateway.url").read_text().strip().rstrip("/")
    except FileNotFoundError:
        return None


class _TlsEofNoise(logging.Filter):
    """asyncio warns, on every TLS connection nats-py opens, that its protocol cannot keep a
    half-closed TLS connection open: nothing the user of a command can act on."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "eof_received" not in record.getMessage()


_TLS_EOF_NOISE = _TlsEofNoise()


def login_of(data_dir: Path, user: str) -> NatsLogin:
    """How CLI command `user` logs in to the shop on `data_dir` (anonymously when it has no NATS users).

    The CA to verify a TLS server with comes from `MESHOP_NATS_TLS_CA_FILE`.
    """
    path = credentials_file(data_dir, user)
    ca = setting("MESHOP_NATS_TLS_CA_FILE")
    return NatsLogin.load(path if path.exists() else None, tls_ca_file=Path(ca) if ca else None)


@contextlib.asynccontextmanager
async def connected(
    url: str,
    *,
    name: str,
    login: NatsLogin | None = None,
    closed_cb: Callable[[], Awaitable[None]] | None = None,
) -> AsyncIterator[NatsClient]:
    """A NATS connection to the shop at `url` that fails with NoShopError instead of retrying.

    `login`: the command's NATS user (None: anonymous). `closed_cb` runs when the connection
    closes, whether the shop went away or the block ended.
    """
    kept: list[Exception] = []
    if login is not None and login.tls_ca_file is not None:
        logging.getLogger("asyncio").addFilter(_TLS_EOF_NOISE)  # a set: added once

    async def keep(exc: Exception) -> None:
        kept.append(exc)

    try:
        nc = await nats.connect(
            servers(url),
            name=name,
            # nats-py retries a first connect until a server has failed more than
            # max_reconnect_attempts times, and 0 means forever: 1 is two attempts, back to back.
            max_reconnect_attempts=1,
            reconnect_time_wait=0,
            allow_reconnect=False,  # a shop that stops mid-command ends it, instead of being waited for
            connect_timeout=CONNECT_TIMEOUT_S,
            error_cb=keep,
            closed_cb=closed_cb,
            **(login or NatsLogin()).options(),
        )
    except (OSError, TimeoutError, nats.errors.Error) as exc:
        raise unreachable(url, kept[-1] if kept else exc) from None
    try:
        yield nc
    except (nats.errors.ConnectionClosedError, nats.errors.TimeoutError, nats.errors.NoRespondersError) as exc:
        raise NoShopError(f"the shop at {url} stopped answering ({exc})") from None
    finally:
        await nc.close()


def unreachable(url: str, exc: BaseException) -> NoShopError:
    """The error for a first connection to `url` that failed with `exc`, saying why in a few words."""
    if isinstance(exc, ConnectionRefusedError):
        why = "nothing listens there: a URL left by a shop that stopped?"
    elif isinstance(exc, TimeoutError) and url.startswith("nats"):  # nats-py's own TimeoutError is one too
        why = f"no NATS greeting within {CONNECT_TIMEOUT_S} s: what listens there is not NATS"
    elif isinstance(exc, ssl.SSLCertVerificationError):
        why = f"{exc.verify_message}: is MESHOP_NATS_TLS_CA_FILE the CA of its certificate?"
    elif isinstance(exc, nats.errors.Error) and not isinstance(exc, nats.errors.NoServersError):
        why = f"what listens there is not NATS: {exc}"
    else:
        why = str(exc) or type(exc).__name__
    return NoShopError(f"no running shop found at {url} ({why}); {_HINT}")
