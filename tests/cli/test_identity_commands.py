"""`meshop identity issue` and `rotate-root`: what a production issuer runs."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from meshop.cli.main import app
from meshop.mesh.security.identity import TRUST_FILE, CredentialFiles, TrustBundle


def test_issue_then_rotate_the_root_keeps_every_credential_valid(tmp_path: Path) -> None:
    issued = CliRunner().invoke(app, ["identity", "issue", "orders", "payments", "--dir", str(tmp_path)])
    assert issued.exit_code == 0, issued.output
    orders, payments = CredentialFiles(tmp_path, "orders"), CredentialFiles(tmp_path, "payments")
    header = orders.minter.header("payments")
    rotated = CliRunner().invoke(app, ["identity", "rotate-root", "--dir", str(tmp_path)])
    assert rotated.exit_code == 0, rotated.output
    assert len(TrustBundle.read(tmp_path / TRUST_FILE).roots) == 2
    payments.reload_if_changed()
    assert payments.verifier.caller(header) == "orders"


def test_a_lifetime_over_an_hour_is_refused(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["identity", "issue", "--dir", str(tmp_path), "--lifetime", "86400"])
    assert result.exit_code == 2
    assert "at most 3600" in result.output
