"""Service identity: certificates chained to a trusted root, audience-bound tokens, renewal."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from meshop.mesh.errors import ConfigError, Unauthorized
from meshop.mesh.security.identity import (
    LEEWAY_S,
    TOKEN_LIFETIME_S,
    TRUST_FILE,
    CallerVerifier,
    CredentialFiles,
    Issuer,
    TokenMinter,
    TrustBundle,
    credential_path,
    load_issuer,
    provision,
    rotate_root,
)
from meshop.mesh.testing import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1_000_000.0)


def _bundle(*issuers: Issuer) -> TrustBundle:
    return TrustBundle({i.kid: i.key.public_key() for i in issuers})


def _header(issuer: Issuer, service: str, callee: str, clock: FakeClock, lifetime_s: float = 3600) -> str:
    return TokenMinter(issuer.issue(service, lifetime_s=lifetime_s), clock=clock).header(callee)


def test_a_certified_callers_token_names_its_service(clock: FakeClock) -> None:
    root = Issuer.generate(clock=clock)
    verifier = CallerVerifier("payments", _bundle(root), clock=clock)
    assert verifier.caller(_header(root, "orders", "payments", clock)) == "orders"


def test_no_header_is_refused(clock: FakeClock) -> None:
    verifier = CallerVerifier("payments", _bundle(Issuer.generate()), clock=clock)
    with pytest.raises(Unauthorized):
        verifier.caller(None)


def test_a_token_for_another_callee_is_refused(clock: FakeClock) -> None:
    """Audience-bound: a token captured on the way to inventory cannot be replayed at payments."""
    root = Issuer.generate(clock=clock)
    verifier = CallerVerifier("payments", _bundle(root), clock=clock)
    with pytest.raises(Unauthorized, match="for 'inventory'"):
        verifier.caller(_header(root, "orders", "inventory", clock))


def test_a_certificate_from_an_unknown_root_is_refused(clock: FakeClock) -> None:
    verifier = CallerVerifier("payments", _bundle(Issuer.generate()), clock=clock)
    with pytest.raises(Unauthorized, match="untrusted root"):
        verifier.caller(_header(Issuer.generate(clock=clock), "orders", "payments", clock))


def test_a_forged_certificate_is_refused(clock: FakeClock) -> None:
    """A certificate whose service name was changed no longer matches the root's signature."""
    root = Issuer.generate(clock=clock)
    verifier = CallerVerifier("payments", _bundle(root), clock=clock)
    shipping = _header(root, "shipping", "payments", clock).split(".")
    orders = _header(root, "orders", "payments", clock).split(".")
    forged = ".".join([orders[0], shipping[1], *shipping[2:]])  # orders' certificate, shipping's signature
    with pytest.raises(Unauthorized, match="invalid"):
        verifier.caller(forged)


def test_a_token_signed_by_another_key_than_its_certificates_is_refused(clock: FakeClock) -> None:
    root = Issuer.generate(clock=clock)
    verifier = CallerVerifier("payments", _bundle(root), clock=clock)
    stolen = _header(root, "orders", "payments", clock).split(".")  # orders' certificate, without its key
    mine = _header(root, "shipping", "payments", clock).split(".")
    with pytest.raises(Unauthorized):
        verifier.caller(".".join([*stolen[:2], *mine[2:]]))


def test_garbage_is_refused_not_an_error(clock: FakeClock) -> None:
    verifier = CallerVerifier("payments", _bundle(Issuer.generate()), clock=clock)
    for header in ("", "a.b.c.d", "x" * 300, "!!.!!.!!.!!", "e30.e30.e30.e30"):
        with pytest.raises(Unauthorized):
            verifier.caller(header)


def test_an_expired_token_is_refused_even_after_being_verified(clock: FakeClock) -> None:
    root = Issuer.generate(clock=clock)
    verifier = CallerVerifier("payments", _bundle(root), clock=clock)
    header = _header(root, "orders", "payments", clock)
    assert verifier.caller(header) == "orders"
    clock.now += TOKEN_LIFETIME_S + LEEWAY_S + 1
    with pytest.raises(Unauthorized):
        verifier.caller(header)


def test_an_expired_certificate_is_refused(clock: FakeClock) -> None:
    root = Issuer.generate(clock=clock)
    credential = root.issue("orders", lifetime_s=60)
    verifier = CallerVerifier("payments", _bundle(root), clock=clock)
    clock.now += 60 + LEEWAY_S + 1
    minter = TokenMinter(credential, clock=clock)
    with pytest.raises(Unauthorized, match="expired"):
        verifier.caller(minter.header("payments"))


def test_a_token_never_outlives_its_certificate(clock: FakeClock) -> None:
    root = Issuer.generate(clock=clock)
    verifier = CallerVerifier("payments", _bundle(root), clock=clock)
    header = _header(root, "orders", "payments", clock, lifetime_s=30)
    assert verifier.caller(header) == "orders"
    clock.now += 30 + LEEWAY_S + 1  # within the token's own five minutes, past the certificate
    with pytest.raises(Unauthorized):
        verifier.caller(header)


def test_certificates_live_at_most_an_hour() -> None:
    with pytest.raises(ConfigError):
        Issuer.generate().issue("orders", lifetime_s=3601)


def test_the_caller_mints_once_then_reuses_until_half_its_life(clock: FakeClock) -> None:
    minter = TokenMinter(Issuer.generate(clock=clock).issue("orders"), clock=clock)
    first = minter.header("payments")
    assert minter.header("payments") == first
    assert minter.header("inventory") != first  # per callee
    clock.now += TOKEN_LIFETIME_S / 2 + 1
    assert minter.header("payments") != first


def test_a_renewed_credential_is_used_without_a_restart_and_loses_no_call(tmp_path: Path, clock: FakeClock) -> None:
    """Files renewed by the issuer are picked up; the old credential's tokens stay valid meanwhile."""
    provision(tmp_path, ["orders", "payments"], lifetime_s=20, clock=clock)
    orders = CredentialFiles(tmp_path, "orders", clock=clock)
    payments = CredentialFiles(tmp_path, "payments", clock=clock)
    before = orders.minter.header("payments")
    for _ in range(6):  # two minutes of renewals every ~7 s, each call verified in between
        clock.now += 20 / 3
        assert payments.verifier.caller(orders.minter.header("payments")) == "orders"
        provision(tmp_path, ["orders"], lifetime_s=20, clock=clock)
        assert orders.reload_if_changed()
        assert payments.verifier.caller(orders.minter.header("payments")) == "orders"
    assert orders.minter.header("payments") != before
    with pytest.raises(Unauthorized):  # and the first one has long expired
        payments.verifier.caller(before)


def test_rotating_the_root_loses_no_call(tmp_path: Path, clock: FakeClock) -> None:
    """The new root is trusted (bundle of two) before it signs; old certificates stay valid until they expire."""
    provision(tmp_path, ["orders", "payments"], clock=clock)
    old_root = load_issuer(tmp_path, clock=clock)
    only_old = CallerVerifier("payments", _bundle(old_root), clock=clock)
    orders = CredentialFiles(tmp_path, "orders", clock=clock)
    payments = CredentialFiles(tmp_path, "payments", clock=clock)
    old = orders.minter.header("payments")
    rotate_root(tmp_path, delay_s=120, clock=clock)
    assert payments.reload_if_changed()  # the bundle now holds both roots
    assert len(TrustBundle.read(tmp_path / TRUST_FILE).roots) == 2
    provision(tmp_path, ["orders"], clock=clock)  # a renewal before the delay: still the old root
    orders.reload_if_changed()
    assert only_old.caller(orders.minter.header("payments")) == "orders"
    clock.now += 121
    provision(tmp_path, ["orders"], clock=clock)  # now the new root signs
    orders.reload_if_changed()
    renewed = orders.minter.header("payments")
    with pytest.raises(Unauthorized, match="untrusted root"):
        only_old.caller(renewed)
    assert payments.verifier.caller(renewed) == "orders"
    assert payments.verifier.caller(old) == "orders"  # the old root's, still within its lifetime
    assert load_issuer(tmp_path, clock=clock).kid != old_root.kid


def test_key_files_are_private(tmp_path: Path) -> None:
    provision(tmp_path, ["orders"])
    for path in (tmp_path / "root.json", credential_path(tmp_path, "orders")):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_missing_credential_fails_at_start_with_its_path(tmp_path: Path) -> None:
    provision(tmp_path, ["orders"])
    with pytest.raises(ConfigError, match=r"payments\.json"):
        CredentialFiles(tmp_path, "payments")


def test_meshop_run_issuing_its_own_identity_provisions_it_through_the_one_code_path(tmp_path: Path) -> None:
    """`meshop run --issue-identity` (MESHOP_IDENTITY_RENEW): the root, bundle and credential are made at start."""
    from meshop.mesh.service.lifecycle import Service, ServiceDefinition
    from meshop.mesh.service.settings import Settings

    async def build(_runtime: object) -> None:
        raise AssertionError("not started")

    definition = ServiceDefinition(name="orders", build=build)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="an issuer writes it"):
        Service(definition, Settings(data_dir=tmp_path))._credentials()
    credentials = Service(definition, Settings(data_dir=tmp_path, identity_renew=True))._credentials()
    assert credentials.minter.service == "orders"
    assert stat.S_IMODE(credential_path(tmp_path / "identity", "orders").stat().st_mode) == 0o600
