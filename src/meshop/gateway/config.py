"""The gateway's declarative routes file, validated, and reloaded when it changes.

```toml
[limits]                                # per client, on every route (defaults shown)
per_ip = "100/s burst 200"              # every client address
per_user = "50/s burst 100"             # every authenticated user

[[routes]]
prefix = "/api/catalog"                 # requests under it go to `service`
service = "catalog"
methods = ["GET"]                       # default: every method the service's contract has
auth = "public"                         # public | user | admin; default: each operation's own
timeout_s = 5.0                         # default: MESHOP_CALL_TIMEOUT_S
retry = "contract"                      # contract (safe retries) | never
rate_limit = "200/s burst 400"          # per user (or per address when anonymous)
cache_ttl_s = 2.0                       # GET answers cached this long (public routes only)
```

A route can make an operation stricter than its contract (`auth = "admin"`), never looser:
the service checks the token itself too. Without a file, every service is routed under
`/api/<service>` with the contracts' rules. A file that does not parse or validate is
rejected with a log line naming the problem, and the previous table stays in force.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import structlog

from meshop.contracts import SERVICES
from meshop.gateway.routesfile import RouteSpec, RoutesSpec
from meshop.mesh.api.operation import Access
from meshop.mesh.errors import ConfigError
from meshop.mesh.resilience.ratelimit import Limit

log = structlog.get_logger("meshop.gateway.config")

_ACCESS = {"public": Access.PUBLIC, "user": Access.USER, "admin": Access.ADMIN}
_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}


@dataclass(frozen=True, slots=True)
class Rule:
    """One validated route."""

    prefix: str
    service: str
    methods: frozenset[str] | None
    access: Access | None
    timeout_s: float | None
    retry: bool
    rate_limit: Limit | None
    cache_ttl_s: float


@dataclass(frozen=True)
class RouteRules:
    """A whole validated routes file: longest prefix wins."""

    rules: tuple[Rule, ...]
    per_ip: Limit | None
    per_user: Limit | None
    source: str = "defaults"
    _ordered: tuple[Rule, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_ordered", tuple(sorted(self.rules, key=lambda r: -len(r.prefix))))

    def match(self, path: str, method: str) -> tuple[Rule, str] | None:
        """The rule for `method path` and the service-relative path, or None."""
        for rule in self._ordered:
            if path == rule.prefix or path.startswith(rule.prefix + "/"):
                if rule.methods is not None and method not in rule.methods:
                    continue
                return rule, path[len(rule.prefix) :] or "/"
        return None


def default_rules() -> RouteRules:
    return parse(b"", source="defaults")


def parse(text: bytes | str, *, source: str, services: Sequence[str] = SERVICES) -> RouteRules:
    """Validate a routes file whose routes lead to `services`; `ConfigError` names the first problem.

    Without routes, each service is routed at `/api/<service>`.
    """
    try:
        raw = tomllib.loads(text.decode() if isinstance(text, bytes) else text)
        spec = msgspec.convert(raw, RoutesSpec)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, msgspec.ValidationError) as exc:
        raise ConfigError(f"{source}: {exc}") from None
    routes = spec.routes or [RouteSpec(prefix=f"/api/{s}", service=s) for s in services]
    rules = []
    seen: set[tuple[str, frozenset[str] | None]] = set()
    for n, route in enumerate(routes, 1):
        where = f"{source}: routes[{n}] ({route.prefix})"
        if route.service not in services:
            raise ConfigError(f"{where}: unknown service {route.service!r}; known: {', '.join(services)}")
        methods = None
        if route.methods is not None:
            methods = frozenset(m.upper() for m in route.methods)
            if not methods or not methods <= _METHODS:
                raise ConfigError(f"{where}: methods must be some of {', '.join(sorted(_METHODS))}")
        if (route.prefix, methods) in seen:
            raise ConfigError(f"{where}: the same prefix and methods appear twice")
        seen.add((route.prefix, methods))
        rules.append(
            Rule(
                prefix=route.prefix,
                service=route.service,
                methods=methods,
                access=_ACCESS[route.auth] if route.auth else None,
                timeout_s=route.timeout_s,
                retry=route.retry == "contract",
                rate_limit=_limit(route.rate_limit, where),
                cache_ttl_s=route.cache_ttl_s,
            )
        )
    return RouteRules(
        rules=tuple(rules),
        per_ip=_limit(spec.limits.per_ip, f"{source}: limits.per_ip"),
        per_user=_limit(spec.limits.per_user, f"{source}: limits.per_user"),
        source=source,
    )


def _limit(text: str | None, where: str) -> Limit | None:
    if text is None or text.strip().lower() in ("", "off", "none"):
        return None
    try:
        return Limit.parse(text)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def override_limits(rules: RouteRules, *, per_ip: str | None, per_user: str | None) -> RouteRules:
    """`rules` with its per-address and per-user limits replaced where a setting is given."""
    return RouteRules(
        rules=rules.rules,
        per_ip=rules.per_ip if per_ip is None else _limit(per_ip, "MESHOP_GATEWAY_RATE_LIMIT_PER_IP"),
        per_user=rules.per_user if per_user is None else _limit(per_user, "MESHOP_GATEWAY_RATE_LIMIT_PER_USER"),
        source=rules.source,
    )


def load(path: Path | None, *, services: Sequence[str] = SERVICES) -> RouteRules:
    """The rules of routes file `path` (None: each service at `/api/<service>`)."""
    if path is None:
        return parse(b"", source="defaults", services=services)
    try:
        return parse(path.read_bytes(), source=str(path), services=services)
    except OSError as exc:
        raise ConfigError(f"cannot read routes file {path}: {exc}") from None


async def watch(
    path: Path, apply: Callable[[RouteRules], None], *, services: Sequence[str] = SERVICES, interval_s: float = 1.0
) -> None:
    """Re-read `path` whenever it changes; apply it if valid, else log why and keep the old one."""
    last = _signature(path)
    while True:
        await asyncio.sleep(interval_s)
        current = _signature(path)
        if current == last:
            continue
        last = current
        try:
            rules = load(path, services=services)
        except ConfigError as exc:
            log.error("routes file rejected; the previous routes stay in force", error=str(exc))
            continue
        apply(rules)
        log.info("routes file reloaded", path=str(path), routes=len(rules.rules))


def _signature(path: Path) -> bytes | None:
    """What the file holds, hashed: an edit that keeps its size and lands within one tick of
    the file system's clock (the same mtime) is still seen. None while it cannot be read."""
    with contextlib.suppress(OSError):
        return hashlib.blake2b(path.read_bytes(), digest_size=16).digest()
    return None
