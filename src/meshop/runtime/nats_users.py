"""The shop's NATS users: one per process and per CLI command, each allowed only its subjects.

`meshop up` (and the chaos harness, through the same `ensure_users`) keeps one credentials
file per user in `<data-dir>/nats-users/` (`<user>.json`, mode 0600, created once, read
again by later runs) and renders from them the embedded server's `authorization` block
(`server.conf`, mode 0600). Permissions are allow-lists; whatever a list does not name is
denied:

- a service serves `meshop.rpc.<service>.>` and answers only requests it received
  (`allow_responses`); it may request exactly the operations its definition says it
  calls (`ServiceDefinition.calls`; the gateway: every operation it routes), plus
  `users.jwks` (every process but users verifies user tokens with users' keys);
- it reads replies only under its own inbox prefix `_INBOX_<user>` (so no process reads
  another's replies, JetStream acknowledgements or KV watches);
- it reads the registry (`KV_meshop_registry`) and writes only its own keys
  (`$KV.meshop_registry.<service>.>`); it reads the revocation bucket, which only users
  writes (logout);
- it publishes spans to `meshop.telemetry.spans`, which only the console reads;
- it publishes its own events (`meshop.events.<service>.>`, stream `MESHOP_EVENTS_<SERVICE>`)
  when it has an outbox (`ServiceDefinition.outbox`), and reads, through its durable
  consumers only, the streams its definition's `consumes` names, dead-lettering to
  `meshop.dlq.<service>.>`;
- the JetStream API is open per stream and per action: stream info and create for the
  streams it uses, update for those it owns (to raise their replicas, mesh.jetstream: its
  event stream, the dead letters it writes, the registry and revocation buckets), consumer
  create/info/next/delete on those it reads, and no stream delete, purge or list at all.

The CLI's users: `up` (waits for the registry, which it may create), `status` (reads the
registry), `events` (reads the event and dead-letter streams, follows events) and `chaos`
(both). Services built elsewhere on the mesh (`meshop up --with`) get users by the same
rules from their definitions. Passwords are kept in plain text in `server.conf`: it lives beside the
credentials files, with the same mode; a server elsewhere is given its own config.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from meshop.contracts import SERVICES, Contract, contracts, users
from meshop.mesh.api.operation import Access, Operation
from meshop.mesh.errors import ConfigError
from meshop.mesh.events.consumer import DLQ_STREAM
from meshop.mesh.events.outbox import event_stream
from meshop.mesh.security.identity import write_secret
from meshop.mesh.security.nats_auth import USERS_DIR, NatsCredentials, credentials_file
from meshop.mesh.service.lifecycle import ServiceDefinition
from meshop.mesh.telemetry.tracing import SPANS_SUBJECT
from meshop.services import PROCESSES, definitions

__all__ = [
    "CLI_USERS",
    "USERS_DIR",
    "VERIFIES",
    "Permissions",
    "credentials_file",
    "ensure_users",
    "new_credentials",
    "permissions_of",
    "render_server_config",
]

#: Under the data dir: one `<user>.json` per user, and `server.conf`.
REGISTRY_BUCKET = "meshop_registry"
REVOKED_BUCKET = "meshop_revoked"  # RevocationList's

#: The shop's processes that verify user tokens with users' keys (`remote_verifier`):
#: every one but users (a service built elsewhere too).
VERIFIES = frozenset(PROCESSES) - {"users"}
#: The CLI's users, besides one per process.
CLI_USERS = ("up", "status", "events", "chaos")


@dataclass(frozen=True)
class Permissions:
    """What one NATS user may publish and subscribe to (allow-lists), and whether it answers requests."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    responses: bool = False

    def config(self) -> dict[str, object]:
        """The user's `permissions` map in nats-server's configuration."""
        out: dict[str, object] = {
            "publish": {"allow": list(self.publish)},
            "subscribe": {"allow": list(self.subscribe)},
        }
        if self.responses:
            out["allow_responses"] = True
        return out


def inbox_prefix(user: str) -> str:
    return f"_INBOX_{user}"


def _api(*subjects: str) -> list[str]:
    return [f"$JS.API.{s}" for s in subjects]


def _read_stream(stream: str) -> list[str]:
    """Read a whole stream: its info, its messages, and ordered consumers (KV watches) on it."""
    return [
        *_api(
            "INFO",  # the account's JetStream limits and usage: nats-py asks before opening a bucket
            f"STREAM.INFO.{stream}",
            f"STREAM.MSG.GET.{stream}",
            f"DIRECT.GET.{stream}",
            f"DIRECT.GET.{stream}.>",
            f"CONSUMER.CREATE.{stream}",
            f"CONSUMER.CREATE.{stream}.>",
            f"CONSUMER.INFO.{stream}.*",
            f"CONSUMER.DELETE.{stream}.*",
        ),
        f"$JS.FC.{stream}.>",  # flow-control answers of an ordered consumer
    ]


def _open_stream(stream: str) -> list[str]:
    """Find a stream, creating it when absent (whoever comes first: producer or consumer)."""
    return _api(f"STREAM.INFO.{stream}", f"STREAM.CREATE.{stream}")


def _own_stream(stream: str) -> list[str]:
    """Find or create a stream, and raise its replicas when MESHOP_NATS_REPLICAS asks more."""
    return _api(f"STREAM.INFO.{stream}", f"STREAM.CREATE.{stream}", f"STREAM.UPDATE.{stream}")


def _durable(stream: str, durable: str) -> list[str]:
    """Create, bind, fetch from and acknowledge one durable pull consumer, and replay the stream."""
    return [
        *_api(
            f"CONSUMER.CREATE.{stream}.{durable}",
            f"CONSUMER.CREATE.{stream}.{durable}.>",
            f"CONSUMER.DURABLE.CREATE.{stream}.{durable}",
            f"CONSUMER.INFO.{stream}.{durable}",
            f"CONSUMER.MSG.NEXT.{stream}.{durable}",
            # a replay reads the stream through an ephemeral consumer (named by nats-py), then deletes it
            f"CONSUMER.CREATE.{stream}",
            f"CONSUMER.CREATE.{stream}.*",
            f"CONSUMER.MSG.NEXT.{stream}.*",
            f"CONSUMER.DELETE.{stream}.*",
        ),
        f"$JS.ACK.{stream}.{durable}.>",
    ]


def _rpc(ops: Iterable[Operation[Any, Any]]) -> list[str]:
    """Request `ops`: on their subject (NATS picks an instance) or an instance's own."""
    return [s for op in ops for s in (op.subject, f"{op.subject}.*")]


def _routed(known: Iterable[Contract]) -> list[Operation[Any, Any]]:
    """Every operation the gateway routes: all but the internal ones."""
    return [op for contract in known for op in contract.operations if op.access is not Access.INTERNAL]


def _extra_contracts(extra: Sequence[ServiceDefinition]) -> list[str]:
    return [d.contract.__name__ for d in extra if d.contract is not None]


def _service(definition: ServiceDefinition, extra: Sequence[ServiceDefinition]) -> Permissions:
    name = definition.name
    registry = f"KV_{REGISTRY_BUCKET}"
    revoked = f"KV_{REVOKED_BUCKET}"
    calls = list(definition.calls)
    if name != "users":
        calls.append(users.JWKS)
    if name == "gateway":
        calls += _routed(contracts(_extra_contracts(extra)).values())
    publish = [
        *_rpc(calls),
        SPANS_SUBJECT,
        *_own_stream(registry),
        *_read_stream(registry),
        f"$KV.{REGISTRY_BUCKET}.{name}.>",
        *_own_stream(revoked),
        *_read_stream(revoked),
    ]
    if name == "users":
        publish.append(f"$KV.{REVOKED_BUCKET}.>")
    if definition.outbox:
        publish += [*_own_stream(event_stream(name)), f"meshop.events.{name}.>"]
    for consumer, events in definition.consumes.items():
        stream = event_stream(events[0].source)
        publish += [*_open_stream(stream), *_durable(stream, f"{name}-{consumer}")]
        publish += [*_own_stream(DLQ_STREAM), f"meshop.dlq.{name}.>"]
    subscribe = [f"meshop.rpc.{name}.>", f"{inbox_prefix(name)}.>"]
    if name == "console":
        subscribe.append(SPANS_SUBJECT)
    return Permissions(tuple(dict.fromkeys(publish)), tuple(subscribe), responses=True)


def _cli(name: str, services: Iterable[str]) -> Permissions:
    registry = f"KV_{REGISTRY_BUCKET}"
    publish: list[str] = []
    subscribe = [f"{inbox_prefix(name)}.>"]
    if name in ("up", "status", "chaos"):
        publish += _read_stream(registry)
    if name == "up":  # it may watch the registry before any service has created it
        publish += _open_stream(registry)
    if name in ("events", "chaos"):
        for stream in [*(event_stream(s) for s in services), DLQ_STREAM]:
            publish += _api(f"STREAM.INFO.{stream}", f"STREAM.MSG.GET.{stream}", f"DIRECT.GET.{stream}")
            publish += _api(f"CONSUMER.LIST.{stream}")
        subscribe.append("meshop.events.>")
    return Permissions(tuple(dict.fromkeys(publish)), tuple(subscribe))


def permissions_of(user: str, *, extra: Sequence[ServiceDefinition] = ()) -> Permissions:
    """The permissions of `user`: a process (the shop's, or one of `extra`, services built
    elsewhere that run beside it) or a CLI command (CLI_USERS)."""
    processes = definitions(extra)
    if user in processes:
        return _service(processes[user], extra)
    if user in CLI_USERS:
        return _cli(user, [*SERVICES, *(d.name for d in extra)])
    raise ValueError(f"no NATS user {user!r}")


def ensure_users(data_dir: Path, *, extra: Sequence[ServiceDefinition] = ()) -> dict[str, NatsCredentials]:
    """Every user's credentials (`extra`: services built elsewhere that run beside the shop),
    created where missing; then `server.conf` rendered from them.

    Existing files are kept, so a server started by an earlier run (the chaos harness
    starts NATS before `meshop up`) and the processes agree on the passwords.
    """
    directory = data_dir / USERS_DIR
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    found: dict[str, NatsCredentials] = {}
    for user in (*definitions(extra), *CLI_USERS):
        path = credentials_file(data_dir, user)
        if path.exists():
            found[user] = NatsCredentials.read(path)
            if found[user].user != user:
                raise ConfigError(f"{path} holds the credentials of {found[user].user!r}, not {user!r}")
            continue
        found[user] = new_credentials(user)
        write_secret(path, msgspec.json.encode(found[user]))
    write_secret(directory / "server.conf", render_server_config(found, extra=extra).encode())
    return found


def new_credentials(user: str) -> NatsCredentials:
    """Fresh credentials for `user`: a random password and the user's own inbox prefix.

    Written as a credentials file with `msgspec.json.encode` (what `NatsCredentials.read` reads).
    """
    return NatsCredentials(user=user, password=secrets.token_urlsafe(24), inbox_prefix=inbox_prefix(user))


def render_server_config(credentials: dict[str, NatsCredentials], *, extra: Sequence[ServiceDefinition] = ()) -> str:
    """The `authorization` block admitting exactly these users, each with its permissions
    (`extra`: the definitions of services built elsewhere, as for `ensure_users`).

    nats-server reads JSON as its configuration format; quoted strings are not expanded,
    so `$JS`/`$KV` subjects stay literal.
    """
    users_config = [
        {"user": c.user, "password": c.password, "permissions": permissions_of(user, extra=extra).config()}
        for user, c in credentials.items()
    ]
    return "authorization " + json.dumps({"users": users_config}, indent=1) + "\n"
