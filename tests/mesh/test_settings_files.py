"""Settings from files: `MESHOP_<NAME>_FILE=/path` instead of `MESHOP_<NAME>` (a mounted Secret)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from meshop.mesh.errors import ConfigError
from meshop.mesh.service.settings import Settings, from_env, load_settings, setting


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_a_setting_is_read_from_the_file_its_file_variable_names(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MESHOP_ADMIN_PASSWORD_FILE", write(tmp_path / "password", "a-long-enough-secret\n"))
    monkeypatch.setenv("MESHOP_HEARTBEAT_S_FILE", write(tmp_path / "heartbeat", "0.5"))
    settings = load_settings("users")
    assert settings.admin_password == "a-long-enough-secret"
    assert settings.heartbeat_s == 0.5


def test_only_one_trailing_newline_is_stripped(tmp_path: Path) -> None:
    env = {"MESHOP_X_FILE": write(tmp_path / "x", "value \n\n")}
    assert setting("MESHOP_X", env) == "value \n"


def test_a_value_given_both_ways_names_both_variables(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MESHOP_DATABASE_URL", "postgresql://a@h")
    monkeypatch.setenv("MESHOP_DATABASE_URL_FILE", write(tmp_path / "url", "postgresql://b@h\n"))
    with pytest.raises(ConfigError, match="both MESHOP_DATABASE_URL and MESHOP_DATABASE_URL_FILE"):
        load_settings("orders")


def test_an_unreadable_file_fails_with_the_variable_and_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    monkeypatch.setenv("MESHOP_ADMIN_PASSWORD_FILE", str(missing))
    with pytest.raises(ConfigError, match=re.escape(f"cannot read MESHOP_ADMIN_PASSWORD_FILE={missing}: No such file")):
        load_settings("users")


def test_an_empty_file_is_refused_rather_than_read_as_unset(tmp_path: Path) -> None:
    """An empty Secret key must not silently fall back to a default (a SQLite file, say)."""
    env = {"MESHOP_DATABASE_URL_FILE": write(tmp_path / "url", "\n")}
    with pytest.raises(ConfigError, match=r"MESHOP_DATABASE_URL_FILE=.* is empty"):
        from_env(Settings, "MESHOP_", environ=env)


def test_a_setting_ending_in_file_is_itself_and_file_file_is_its_file_form(tmp_path: Path) -> None:
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    env = {"MESHOP_TLS_CERT_FILE": str(cert), "MESHOP_TLS_KEY_FILE": str(key)}
    assert from_env(Settings, "MESHOP_", environ=env).tls_cert_file == cert  # the path itself, not read
    env = {
        "MESHOP_TLS_CERT_FILE_FILE": write(tmp_path / "cert-path", f"{cert}\n"),
        "MESHOP_TLS_KEY_FILE": str(key),
    }
    assert from_env(Settings, "MESHOP_", environ=env).tls_cert_file == cert
    env["MESHOP_TLS_CERT_FILE"] = str(cert)
    with pytest.raises(ConfigError, match="both MESHOP_TLS_CERT_FILE and MESHOP_TLS_CERT_FILE_FILE"):
        from_env(Settings, "MESHOP_", environ=env)


def test_a_struct_whose_variables_would_be_ambiguous_is_refused() -> None:
    class Clash(msgspec.Struct, kw_only=True):
        token: str | None = None
        token_file: str | None = None

    with pytest.raises(TypeError, match="token and token_file"):
        from_env(Clash, "MESHOP_", environ={})


def test_per_service_database_urls_may_come_from_files(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MESHOP_ORDERS_DATABASE_URL_FILE", write(tmp_path / "orders", "postgresql://u@h/o\n"))
    monkeypatch.setenv("MESHOP_DATABASE_URL_FILE", write(tmp_path / "shared", "postgresql://u@h:5432\n"))
    settings = load_settings("orders")
    assert settings.service_database_urls == {"orders": "postgresql://u@h/o"}
    assert settings.database_url_for("orders") == "postgresql+asyncpg://u@h/o"
    assert settings.database_url_for("catalog") == "postgresql+asyncpg://u@h:5432/meshop_catalog"
    monkeypatch.setenv("MESHOP_ORDERS_DATABASE_URL", "postgresql://u@h/x")
    with pytest.raises(ConfigError, match="MESHOP_ORDERS_DATABASE_URL_FILE"):
        load_settings("orders")


def test_meshop_run_reports_an_unreadable_file_in_one_line_with_exit_code_2(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "MESHOP_ADMIN_PASSWORD_FILE": str(tmp_path / "missing")}
    done = subprocess.run(
        [sys.executable, "-m", "meshop.runtime.worker", "users"], env=env, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"meshop: cannot read MESHOP_ADMIN_PASSWORD_FILE={tmp_path / 'missing'}: No such file or directory"
    ]
