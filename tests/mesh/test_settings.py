"""Settings: read once, malformed values fail at start with the variable's name."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshop.mesh.errors import ConfigError
from meshop.mesh.service.settings import load_settings


def test_a_malformed_value_names_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHOP_PORT", "eighty")
    with pytest.raises(ConfigError, match="MESHOP_PORT"):
        load_settings("catalog")


def test_per_service_database_urls_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHOP_ORDERS_DATABASE_URL", "postgresql://u@h/o")
    assert load_settings("orders").database_url_for("orders") == "postgresql+asyncpg://u@h/o"


def test_an_invalid_service_name_is_rejected() -> None:
    with pytest.raises(ConfigError):
        load_settings("Bad Name")


def test_an_empty_admin_password_means_unset_and_a_short_one_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHOP_ADMIN_PASSWORD", "")
    assert load_settings("users").admin_password is None
    monkeypatch.setenv("MESHOP_ADMIN_PASSWORD", "short")
    with pytest.raises(ConfigError, match="MESHOP_ADMIN_PASSWORD"):
        load_settings("users")
    monkeypatch.setenv("MESHOP_ADMIN_PASSWORD", "a-long-enough-secret")
    settings = load_settings("users")
    assert settings.admin_password == "a-long-enough-secret"
    assert "a-long-enough-secret" not in repr(settings)


def test_values_are_converted_to_their_types(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MESHOP_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("MESHOP_HEARTBEAT_S", "0.25")
    monkeypatch.setenv("MESHOP_LOG_FORMAT", "console")
    settings = load_settings("catalog")
    assert settings.data_dir == tmp_path
    assert settings.heartbeat_s == 0.25
    assert settings.log_format == "console"
    monkeypatch.setenv("MESHOP_LOG_FORMAT", "xml")
    with pytest.raises(ConfigError, match="MESHOP_LOG_FORMAT"):
        load_settings("catalog")
