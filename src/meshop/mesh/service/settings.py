"""Process settings, read once at start from `MESHOP_*` environment variables.

Settings are frozen msgspec Structs filled by `from_env`: each field `name` is read from
`<PREFIX><NAME>` (an empty value counts as unset), converted and validated; a malformed
value fails at start with the variable's name. (msgspec rather than pydantic-settings:
the same validation for ~12 MB less RSS per process; docs/decisions/0003.)

Any setting may instead come from a file: `<PREFIX><NAME>_FILE=/path` gives the file's
content, one trailing newline stripped (a Kubernetes Secret mounted as files; decision
0022). The suffix is appended to the setting's full variable, so a setting that itself ends
in `_FILE` is unambiguous: `MESHOP_TLS_CERT_FILE` is the setting (a path), and
`MESHOP_TLS_CERT_FILE_FILE` a file holding that path. `from_env` refuses a Struct with
fields `x` and `x_file` both, the one case where that reading would be ambiguous.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import msgspec
from msgspec import Meta

from meshop.mesh.errors import ConfigError
from meshop.mesh.security.nats_auth import NatsLogin

_SERVICE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_FIELD_IN_ERROR = re.compile(r"at `\$\.(\w+)`")

T = TypeVar("T")

Seconds = Annotated[float, Meta(gt=0)]


FILE_SUFFIX = "_FILE"


def setting(name: str, environ: Mapping[str, str] | None = None) -> str | None:
    """The value of variable `name`, or the content of the file `<name>_FILE` names (None: unset).

    An empty variable counts as unset; both set, an unreadable file or an empty one (a
    Secret key missing its value) fail with a ConfigError naming the variables.
    """
    env = os.environ if environ is None else environ
    direct = env.get(name) or None
    file_variable = name + FILE_SUFFIX
    path = env.get(file_variable) or None
    if path is None:
        return direct
    if direct is not None:
        raise ConfigError(f"both {name} and {file_variable} are set: set one of them")
    try:
        content = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"cannot read {file_variable}={path}: {why}") from None
    value = content.removesuffix("\n")
    if not value:
        raise ConfigError(f"{file_variable}={path} is empty")
    return value


def from_env(cls: type[T], prefix: str, *, environ: Mapping[str, str] | None = None, **overrides: Any) -> T:
    """An instance of the Struct `cls` from `<prefix><FIELD>` (or `<prefix><FIELD>_FILE`) variables and `overrides`."""
    env = os.environ if environ is None else environ
    names = [field.name for field in msgspec.structs.fields(cls)]  # type: ignore[arg-type]
    clashes = [name for name in names if name + FILE_SUFFIX.lower() in names]
    if clashes:  # <PREFIX>X_FILE would be both field x_file and the file form of field x
        raise TypeError(f"{cls.__name__} has fields {clashes[0]} and {clashes[0]}_file: their variables clash")
    raw: dict[str, Any] = {}
    for name in names:
        value = setting(prefix + name.upper(), env)
        if value is not None:
            raw[name] = value
    raw.update(overrides)
    try:
        return msgspec.convert(raw, cls, strict=False, dec_hook=_decode)
    except msgspec.ValidationError as exc:
        found = _FIELD_IN_ERROR.search(str(exc))
        name = prefix + found.group(1).upper() if found else prefix.rstrip("_")
        raise ConfigError(f"invalid setting {name}: {exc}") from None


def _decode(type_: type, value: Any) -> Any:
    if type_ is Path:
        return Path(value)
    raise NotImplementedError(type_)


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """Everything a meshop process reads from `MESHOP_*` variables.

    Per-service database URLs are `MESHOP_<SERVICE>_DATABASE_URL`, resolved by
    `database_url_for`.
    """

    data_dir: Path = Path(".meshop")
    #: One server's URL, or a cluster's, comma-separated (clients fail over between them).
    nats_url: str | None = None
    nats_server_bin: Path | None = None
    #: This process's NATS user (see mesh.security.nats_auth); unset: connect anonymously.
    nats_credentials_file: Path | None = None
    #: TLS to NATS: the CA clients verify the server with; the certificate and key the
    #: embedded server (`meshop up`) presents. Unset: plain TCP (loopback by default).
    nats_tls_ca_file: Path | None = None
    nats_tls_cert_file: Path | None = None
    nats_tls_key_file: Path | None = None
    host: str = "127.0.0.1"
    port: Annotated[int, Meta(ge=0, le=65535)] = 0
    #: Bind with SO_REUSEPORT, so that several processes serve one port and the kernel
    #: spreads connections between them (`meshop up --replicas gateway=N` sets it).
    reuse_port: bool = False
    advertise_host: str | None = None
    zone: str = "local"
    #: Callers prefer instances in their own zone and spill over to others when the zone's
    #: instances fail or are overloaded (mesh/client/zones.py): this many requests in flight per
    #: healthy instance of the zone is overloaded.
    zone_aware: bool = True
    zone_overload_in_flight: Annotated[int, Meta(ge=1, le=10_000)] = 16
    instance_id: Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]{1,64}$")] | None = None
    database_url: str | None = None
    database_prefix: Annotated[str, Meta(pattern=r"^[a-z_][a-z0-9_]*$")] = "meshop_"
    #: PostgreSQL connections per process: this many kept, as many again under bursts. A
    #: shop's processes together must stay under the server's max_connections (100 by
    #: default): 8 processes x 10 = 80.
    database_pool_size: Annotated[int, Meta(ge=1, le=100)] = 5
    #: A folder where a SQLite database writes every statement it runs, as SQLite expands it
    #: (`<database>.<pid>.sql`, JSON lines): what bench/checkout_floor.py replays. Unset: none.
    sql_trace_dir: Path | None = None
    admin_password: str | None = None
    log_format: Literal["json", "console"] = "json"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    heartbeat_s: Seconds = 0.75
    registry_ttl_s: Seconds = 2.25  # three heartbeats
    registry_bucket: str = "meshop_registry"
    #: Copies of every JetStream stream and KV bucket meshop creates (3 on a NATS cluster);
    #: existing ones with fewer are raised (mesh.jetstream).
    nats_replicas: Annotated[int, Meta(ge=1, le=5)] = 1
    call_timeout_s: Seconds = 10.0
    #: How often every process re-reads the signing keys (JWKS) from the users service.
    jwks_refresh_s: Seconds = 30.0
    #: Enables PUT /_meshop/faults (loopback only): injected latency and errors for chaos tests.
    chaos: bool = False
    #: The gateway names the instance and transport that answered (x-meshop-upstream, ...).
    debug_headers: bool = False
    #: A TOML file of resilience policies per service and operation (see resilience.config).
    policies_file: Path | None = None
    drain_timeout_s: Annotated[float, Meta(ge=0)] = 8.0
    max_body_bytes: Annotated[int, Meta(gt=0)] = 1_048_576
    #: TLS for a public listener (the gateway): PEM certificate chain and private key.
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    #: Spans of every request, call, saga step and event, sent to the console (and over
    #: OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set). Off: trace ids still propagate.
    tracing: bool = True
    #: RED metrics of every route and call at /metrics. Off: /metrics answers 404.
    metrics: bool = True
    #: The outbox relay publishes as soon as a transaction that emitted an event commits. Off,
    #: only its sweep (every second) does: the baseline bench/outbox_latency.py compares with.
    outbox_wake: bool = True
    #: Under load, a commit's wake within this long of the relay's last sweep waits out the rest
    #: of it, so the commits meanwhile go in one sweep (decision 0035); 0: every wake sweeps at once.
    outbox_linger_s: Annotated[float, Meta(ge=0, le=1)] = 0.02
    #: A file holding the scrape token: `Bearer <it>` reads /metrics (and the gateway's
    #: /_meshop/instances) and nothing else
    #: (`meshop up` writes `<data-dir>/scrape-token` and sets this; see mesh/security/scrape_token.py).
    metrics_token_file: Path | None = None
    #: Loopback clients read /metrics with no credential (off: they need one like anyone).
    metrics_loopback: bool = True
    #: Deliveries of an event whose handler keeps failing before it goes to the dead-letter stream.
    consumer_max_deliver: Annotated[int, Meta(ge=1, le=100)] = 5
    #: Service identity (docs/decisions/0020): the trust bundle and each service's credential
    #: (default: <data dir>/identity), the lifetime of a service certificate, and whether
    #: this process renews its own credential from the root key there (`meshop run`).
    identity_dir: Path | None = None
    identity_lifetime_s: Annotated[float, Meta(ge=10, le=3600)] = 3600.0
    identity_renew: bool = False
    # The per-service database URLs, filled by `load_settings`.
    service_database_urls: dict[str, str] = msgspec.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.admin_password is not None and len(self.admin_password) < 12:
            raise ValueError("the admin password must be at least 12 characters - at `$.admin_password`")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("set both or neither of the TLS certificate and key - at `$.tls_key_file`")
        if (self.nats_tls_cert_file is None) != (self.nats_tls_key_file is None):
            raise ValueError("set both or neither of the NATS TLS certificate and key - at `$.nats_tls_key_file`")

    def __repr__(self) -> str:  # never print the admin password
        fields = {f: getattr(self, f) for f in self.__struct_fields__ if f != "admin_password"}
        return f"Settings({', '.join(f'{k}={v!r}' for k, v in fields.items())}, admin_password=***)"

    @property
    def identity_directory(self) -> Path:
        return self.identity_dir or self.data_dir / "identity"

    def nats_login(self) -> NatsLogin:
        """How this process logs in to NATS (its credentials file read now: a bad one fails at start)."""
        return NatsLogin.load(self.nats_credentials_file, tls_ca_file=self.nats_tls_ca_file)

    def database_url_for(self, service: str) -> str:
        """The SQLAlchemy URL of `service`'s own database.

        Precedence: `MESHOP_<SERVICE>_DATABASE_URL` > `MESHOP_DATABASE_URL` (a server:
        the database is `<prefix><service>` on it) > a SQLite file under the data dir.
        """
        if service in self.service_database_urls:
            return _async_driver(self.service_database_urls[service])
        if self.database_url:
            base = _async_driver(self.database_url)
            if base.startswith("sqlite"):
                return base
            head, _, _ = base.rpartition("/")
            if "://" not in head:  # no path part at all: "postgresql://host:5432"
                head = base
            return f"{head}/{self.database_prefix}{service}"
        return f"sqlite+aiosqlite:///{(self.data_dir / f'{service}.db').resolve()}"


def _async_driver(url: str) -> str:
    for plain, driver in (
        ("postgresql://", "postgresql+asyncpg://"),
        ("postgres://", "postgresql+asyncpg://"),
        ("sqlite://", "sqlite+aiosqlite://"),
    ):
        if url.startswith(plain):
            return driver + url.removeprefix(plain)
    return url


def load_settings(service: str | None = None, **overrides: Any) -> Settings:
    """Read the settings of one process; a malformed value fails with its variable's name."""
    if service is not None and not _SERVICE_NAME.match(service):
        raise ConfigError(f"invalid service name {service!r}")
    return from_env(Settings, "MESHOP_", service_database_urls=service_database_urls(), **overrides)


def service_database_urls(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Each `MESHOP_<SERVICE>_DATABASE_URL` (or its `_FILE` form) set, by service name."""
    env = os.environ if environ is None else environ
    variables = {
        key.removesuffix(FILE_SUFFIX)
        for key in env
        if key.startswith("MESHOP_") and key.removesuffix(FILE_SUFFIX).endswith("_DATABASE_URL")
    }
    variables.discard("MESHOP_DATABASE_URL")
    urls = {}
    for variable in sorted(variables):
        value = setting(variable, env)
        if value is not None:
            urls[variable.removeprefix("MESHOP_").removesuffix("_DATABASE_URL").lower()] = value
    return urls
