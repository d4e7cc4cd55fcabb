"""Process settings, read once at start from `MESHOP_*` environment variables."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from meshop.mesh.errors import ConfigError

_SERVICE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


class Settings(BaseSettings):
    """Everything a meshop process reads from its environment.

    Each field is `MESHOP_<FIELD>`; per-service database URLs are
    `MESHOP_<SERVICE>_DATABASE_URL` and are resolved by `database_url_for`.
    """

    model_config = SettingsConfigDict(env_prefix="MESHOP_", extra="ignore", frozen=True)

    data_dir: Path = Path(".meshop")
    nats_url: str | None = None
    nats_server_bin: Path | None = None
    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535)
    advertise_host: str | None = None
    zone: str = "local"
    instance_id: str | None = None
    database_url: str | None = None
    database_prefix: str = "meshop_"
    admin_password: SecretStr | None = None
    log_format: Literal["json", "console"] = "json"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    heartbeat_s: float = Field(default=1.0, gt=0)
    registry_ttl_s: float = Field(default=3.0, gt=0)
    registry_bucket: str = "meshop_registry"
    call_timeout_s: float = Field(default=10.0, gt=0)
    drain_timeout_s: float = Field(default=8.0, ge=0)
    max_body_bytes: int = Field(default=1_048_576, gt=0)
    # The raw per-service database URLs, filled by `load_settings`.
    service_database_urls: dict[str, str] = Field(default_factory=dict)

    @field_validator("admin_password", mode="before")
    @classmethod
    def _admin_password(cls, value: object) -> object:
        if value is None or (isinstance(value, str) and value == ""):
            return None  # unset: a password is generated on first start
        if isinstance(value, str) and len(value) < 12:
            raise ValueError("must be at least 12 characters")
        return value

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


def load_settings(service: str | None = None, **overrides: object) -> Settings:
    """Read the settings of one process; a malformed value fails with its variable's name."""
    if service is not None and not _SERVICE_NAME.match(service):
        raise ConfigError(f"invalid service name {service!r}")
    urls = {
        key.removeprefix("MESHOP_").removesuffix("_DATABASE_URL").lower(): value
        for key, value in os.environ.items()
        if key.startswith("MESHOP_") and key.endswith("_DATABASE_URL") and key != "MESHOP_DATABASE_URL"
    }
    try:
        return Settings(service_database_urls=urls, **overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = "; ".join(
            f"MESHOP_{'_'.join(str(p) for p in err['loc']).upper()}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"invalid settings: {problems}") from exc
