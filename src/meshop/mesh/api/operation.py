"""Operations: the unit a client calls, defined once and used by every layer.

An `Operation` binds a name (`inventory.reserve`) to an HTTP method and path, a NATS
subject derived from the name, its request and response types, who may call it (its
`access`, and for an INTERNAL operation the services allowed to: `callers`), and
whether it may be retried as is (`idempotent`) or only with an idempotency key
(`requires_key`), and how long one try of it should take at most (`per_try_timeout_s`).
The route layer serves it, the client calls it, the gateway routes it.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import msgspec

_PARAM = re.compile(r"\{([a-z_][a-z0-9_]*)\}")

Req = TypeVar("Req")
Resp = TypeVar("Resp")


class Access(enum.Enum):
    """Who may call an operation."""

    PUBLIC = "public"  # anyone, through the gateway
    USER = "user"  # a verified user token
    ADMIN = "admin"  # a verified token with role `admin`
    INTERNAL = "internal"  # other services only: the gateway never routes it


@dataclass(frozen=True, slots=True)
class Operation(Generic[Req, Resp]):
    """One remotely callable operation of a service."""

    service: str
    name: str
    method: str
    path: str
    request: type[Req] | None = None
    response: type[Resp] | None = None
    access: Access = Access.INTERNAL
    # The contract's "what" above is spelled positionally in every declaration; its options are named.
    _: KW_ONLY
    idempotent: bool = False
    requires_key: bool = False
    status: int = 200
    summary: str = ""
    errors: tuple[int, ...] = ()
    #: The services that may call an INTERNAL operation; none listed: nobody may (default deny).
    callers: tuple[str, ...] = ()
    #: How long one try may take before its caller gives up on that instance and, where it
    #: may, retries another: stated by the operation's owner, who knows its latency (as a
    #: Linkerd service profile or a gRPC service config does). A caller's policy file, per
    #: service or operation, overrides it; None: the caller's policy alone decides.
    per_try_timeout_s: float | None = None
    _pattern: re.Pattern[str] = field(init=False, repr=False, compare=False)
    # Read on every gateway request: computed once, and plain slots (a property would be a
    # Python call from the compiled gateway).
    #: The NATS subject this operation is served on (request-reply, queue group).
    subject: str = field(init=False, repr=False, compare=False)
    #: True when a retry cannot cause a second effect without an idempotency key.
    retry_safe: bool = field(init=False, repr=False, compare=False)
    #: True when every field of the request has a default: an empty body means all of them.
    body_optional: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.path.startswith("/"):
            raise ValueError(f"{self.qualified}: path must start with '/'")
        if self.method not in {"GET", "POST", "PUT", "PATCH", "DELETE"}:
            raise ValueError(f"{self.qualified}: unsupported method {self.method}")
        if self.method == "GET" and self.request is not None:
            raise ValueError(f"{self.qualified}: a GET has no body")
        if self.callers and self.access is not Access.INTERNAL:
            raise ValueError(f"{self.qualified}: only an INTERNAL operation lists its callers")
        if self.per_try_timeout_s is not None and not self.per_try_timeout_s > 0:
            raise ValueError(f"{self.qualified}: per_try_timeout_s must be > 0")
        regex = (
            "^"
            + _PARAM.sub(
                lambda m: f"(?P<{m.group(1)}>[^/]+)", re.escape(self.path).replace(r"\{", "{").replace(r"\}", "}")
            )
            + "$"
        )
        object.__setattr__(self, "_pattern", re.compile(regex))
        object.__setattr__(self, "subject", f"meshop.rpc.{self.service}.{self.name}")
        object.__setattr__(self, "retry_safe", self.idempotent or self.method in {"GET", "PUT", "DELETE"})
        object.__setattr__(self, "body_optional", _has_no_required_field(self.request))

    @property
    def qualified(self) -> str:
        return f"{self.service}.{self.name}"

    @property
    def path_params(self) -> tuple[str, ...]:
        return tuple(_PARAM.findall(self.path))

    def match(self, path: str) -> dict[str, str] | None:
        """The path parameters if `path` is this operation's path, else None."""
        m = self._pattern.match(path)
        return m.groupdict() if m else None

    def render_path(self, params: Mapping[str, Any] | None = None) -> str:
        """The concrete path, with `{name}` parameters filled in and escaped."""
        if "{" not in self.path:
            return self.path
        values = params or {}
        try:
            return _PARAM.sub(lambda m: quote(str(values[m.group(1)]), safe=""), self.path)
        except KeyError as exc:
            raise ValueError(f"{self.qualified}: missing path parameter {exc}") from None


def _has_no_required_field(request: type[Any] | None) -> bool:
    """Whether `{}` is a whole request of this type: a struct whose every field has a default."""
    if not (isinstance(request, type) and issubclass(request, msgspec.Struct)):
        return False
    return not any(f.required for f in msgspec.structs.fields(request))
