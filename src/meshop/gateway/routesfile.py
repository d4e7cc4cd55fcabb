"""The routes file's schema, as msgspec validates it (`gateway.config` turns it into rules).

Apart from `config` because that module is compiled (docs/decisions/0014) and a msgspec
Struct must stay an interpreted class.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec


class LimitsSpec(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    per_ip: str | None = "100/s burst 200"
    per_user: str | None = "50/s burst 100"


class RouteSpec(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    prefix: Annotated[str, msgspec.Meta(pattern=r"^/api(/[A-Za-z0-9._~-]+)*$")]
    service: str
    methods: list[str] | None = None
    auth: Literal["public", "user", "admin"] | None = None
    timeout_s: Annotated[float, msgspec.Meta(gt=0, le=300)] | None = None
    retry: Literal["contract", "never"] = "contract"
    rate_limit: str | None = None
    cache_ttl_s: Annotated[float, msgspec.Meta(ge=0, le=3600)] = 0.0


class RoutesSpec(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    limits: LimitsSpec = msgspec.field(default_factory=LimitsSpec)
    routes: list[RouteSpec] = msgspec.field(default_factory=list)
