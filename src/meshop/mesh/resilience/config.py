"""Where policies come from: defaults, a TOML file, then environment variables.

```toml
[default]                       # every call
timeout_s = 10.0
[default.retry]
attempts = 3
[services.catalog]              # every operation of catalog
balancer = "peak_ewma"
[services.catalog.operations.list]
per_try_timeout_s = 0.5
```

Environment variables override the file: `MESHOP_POLICY__<scope>__<setting>` where scope
is `default`, `<service>` or `<service>__<operation>`, and a nested setting is
`retry__attempts`; values are TOML scalars (`MESHOP_POLICY__catalog__retry__attempts=5`).
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from meshop.mesh.errors import ConfigError
from meshop.mesh.resilience.policy import _NESTED, CallPolicy, merged

ENV_PREFIX = "MESHOP_POLICY__"


class Policies:
    """Resolves the `CallPolicy` of each operation.

    Each level overrides the one before: the default table, the operation's own
    `per_try_timeout_s` (its owner's statement in the contract), the service's table, the
    operation's table.
    """

    def __init__(self, tables: Mapping[str, Any] | None = None) -> None:
        self._tables: dict[str, Any] = dict(tables or {})
        self._cache: dict[tuple[str, str, float | None], CallPolicy] = {}
        try:
            self.default = merged(CallPolicy(), self._tables.get("default", {}))
            for service in self._tables.get("services", {}):
                for operation in [None, *self._tables["services"][service].get("operations", {})]:
                    self.for_operation(service, operation)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"invalid resilience policy: {exc}") from None

    @classmethod
    def load(cls, path: Path | None = None, environ: Mapping[str, str] | None = None) -> Policies:
        tables: dict[str, Any] = {}
        if path is not None:
            try:
                tables = tomllib.loads(path.read_text())
            except (OSError, tomllib.TOMLDecodeError) as exc:
                raise ConfigError(f"cannot read policies file {path}: {exc}") from None
        for key, raw in (os.environ if environ is None else environ).items():
            if key.startswith(ENV_PREFIX):
                _apply_env(tables, key.removeprefix(ENV_PREFIX).lower().split("__"), raw, key)
        return cls(tables)

    def override_default(self, policy: CallPolicy) -> None:
        """Replace the default every service and operation inherits from."""
        self.default = policy
        self._cache.clear()

    def for_operation(
        self, service: str, operation: str | None, *, per_try_timeout_s: float | None = None
    ) -> CallPolicy:
        """The policy of `service`'s `operation` (None: of the service as a whole).

        `per_try_timeout_s` is what the operation itself states (`Operation.per_try_timeout_s`).
        """
        key = (service, operation or "", per_try_timeout_s)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        table = self._tables.get("services", {}).get(service, {})
        policy = self.default
        if per_try_timeout_s is not None:
            policy = replace(policy, per_try_timeout_s=per_try_timeout_s)
        policy = merged(policy, table)
        if operation is not None:
            policy = merged(policy, table.get("operations", {}).get(operation, {}))
        self._cache[key] = policy
        return policy


def _apply_env(tables: dict[str, Any], parts: list[str], raw: str, key: str) -> None:
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # a bare word: a string
    nested = parts[-2] if len(parts) >= 2 and parts[-2] in _NESTED else None
    scope = parts[: -2 if nested else -1]
    setting = parts[-1]
    if scope == ["default"]:
        target = tables.setdefault("default", {})
    elif len(scope) == 1:
        target = tables.setdefault("services", {}).setdefault(scope[0], {})
    elif len(scope) == 2:
        service = tables.setdefault("services", {}).setdefault(scope[0], {})
        target = service.setdefault("operations", {}).setdefault(scope[1], {})
    else:
        raise ConfigError(f"{key}: expected MESHOP_POLICY__<scope>__[<group>__]<setting>")
    if nested:
        target = target.setdefault(nested, {})
    target[setting] = value
