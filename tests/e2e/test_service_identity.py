"""Nobody calls an INTERNAL operation but the services its contract lists, over HTTP and NATS.

Against a live shop whose service certificates live 20 s (so that the module also calls
across renewals): every INTERNAL operation, on an instance's own port and on its NATS
subject, refuses a call without identity, with a forged, expired or replayed credential
(401) and with a valid identity of a service it does not list (403); none of it changes a
store; checkouts keep completing while every credential is renewed.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import nats
import pytest
from prometheus_client.parser import text_string_to_metric_families

from meshop.contracts import SERVICES, operations_of
from meshop.mesh.api.operation import Access, Operation
from meshop.mesh.headers import PATH_HEADER
from meshop.mesh.security.identity import (
    IDENTITY_HEADER,
    Credential,
    Issuer,
    TokenMinter,
    credential_path,
    load_issuer,
)
from meshop.mesh.transport.nats import answer_of
from meshop.runtime.admin import ShopAdmin, locate
from meshop.runtime.connection import login_of, nats_url_of
from meshop.services import definitions
from tests.e2e.api import Api, order_body
from tests.e2e.conftest import Shop, start_shop

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

LIFETIME_S = 20
INTERNAL = [op for service in SERVICES for op in operations_of(service) if op.access is Access.INTERNAL]


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shop]:
    """A shop whose certificates live 20 s: renewed every ~7 s by `meshop up`, read by every process."""
    running = start_shop(tmp_path_factory.mktemp("shop"), env={"MESHOP_IDENTITY_LIFETIME_S": str(LIFETIME_S)})
    yield running
    running.stop()


def _identity_dir(shop: Shop) -> Path:
    return shop.data_dir.resolve() / "identity"


def _as(shop: Shop, service: str, callee: str) -> str:
    """`service`'s genuine identity for `callee`, from the credential `meshop up` issued it."""
    return TokenMinter(Credential.read(credential_path(_identity_dir(shop), service))).header(callee)


def _not_a_caller(op: Operation[Any, Any]) -> str:
    return next(s for s in ("console", "users", "shipping", "catalog") if s not in op.callers and s != op.service)


def _refusals(shop: Shop, op: Operation[Any, Any]) -> list[tuple[str, dict[str, str], int]]:
    """(what, headers, expected status) for each credential that must be refused."""
    allowed = op.callers[0]
    expired_root = load_issuer(_identity_dir(shop), clock=lambda: time.time() - 7200)  # the shop's root, 2 h ago
    expired = TokenMinter(expired_root.issue(allowed), clock=lambda: time.time() - 7200).header(op.service)
    forged = TokenMinter(Issuer.generate().issue(allowed)).header(op.service)  # a root nobody trusts
    genuine = _as(shop, allowed, op.service).split(".")
    other = _as(shop, _not_a_caller(op), op.service).split(".")
    spliced = ".".join([genuine[0], other[1], *other[2:]])  # the allowed caller's name, another's signature
    replayed = _as(shop, allowed, "users")  # a genuine token, captured on its way to another service
    return [
        ("no identity", {}, 401),
        ("expired", {IDENTITY_HEADER: expired}, 401),
        ("forged", {IDENTITY_HEADER: forged}, 401),
        ("spliced", {IDENTITY_HEADER: spliced}, 401),
        ("replayed", {IDENTITY_HEADER: replayed}, 401),
        ("another service", {IDENTITY_HEADER: _as(shop, _not_a_caller(op), op.service)}, 403),
    ]


def _request(op: Operation[Any, Any]) -> tuple[str, bytes, dict[str, str]]:
    """A request each operation would accept from an allowed caller (it must not get that far)."""
    path = op.render_path({name: uuid.uuid4().hex for name in op.path_params})
    headers = {"content-type": "application/json", "idempotency-key": uuid.uuid4().hex}
    body = {
        "catalog.lookup": {"skus": ["KIT-001"]},
        "inventory.reserve": {"order_id": "x", "items": [{"sku": "KIT-001", "quantity": 1}]},
        "payments.tokenize": {"card_number": "4242424242424242", "exp_month": 12, "exp_year": 2031, "cvc": "123"},
    }.get(op.qualified, {"order_id": "x"})
    return path, msgspec.json.encode(body), headers


async def _snapshot(shop: Shop) -> dict[str, Any]:
    url, password = locate(shop.data_dir)
    async with ShopAdmin(url, password) as admin:
        return {
            path: await admin.all(path)
            for path in (
                "/api/inventory/admin/stock",
                "/api/inventory/admin/reservations",
                "/api/payments/admin/payments",
                "/api/shipping/admin/shipments",
                "/api/orders/admin/orders",
            )
        }


@pytest.fixture(scope="module")
def before(shop: Shop) -> dict[str, Any]:
    return asyncio.run(_snapshot(shop))


async def test_every_internal_operation_refuses_what_is_not_an_allowed_caller_over_http(
    shop: Shop, before: dict[str, Any], session: aiohttp.ClientSession
) -> None:
    instances = {row["service"]: row["address"] for row in shop.status()}
    wrong = []
    for op in INTERNAL:
        path, body, headers = _request(op)
        for what, identity, expected in _refusals(shop, op):
            url = f"http://{instances[op.service]}{path}"
            async with session.request(op.method, url, data=body, headers={**headers, **identity}) as resp:
                problem = await resp.read()
                if resp.status != expected or resp.headers["content-type"] != "application/problem+json":
                    wrong.append(f"{op.qualified} {what}: {resp.status} {problem[:200]!r}")
    assert not wrong, "\n".join(wrong)


async def test_every_internal_operation_refuses_what_is_not_an_allowed_caller_over_nats(
    shop: Shop, before: dict[str, Any]
) -> None:
    """As the NATS user of orders, which may send every operation any service calls: NATS lets
    the request through, the callee refuses it. An operation no service calls over NATS
    (a compensation only an operator would run) is refused by NATS itself."""
    errors: list[Exception] = []

    async def keep(exc: Exception) -> None:
        errors.append(exc)

    nc = await nats.connect(nats_url_of(shop.data_dir), error_cb=keep, **login_of(shop.data_dir, "orders").options())
    callable_over_nats = {op.qualified for d in definitions().values() for op in d.calls}
    wrong = []
    try:
        for op in INTERNAL:
            path, body, headers = _request(op)
            if op.qualified not in callable_over_nats:
                # NATS refuses the subject whatever the identity (one try, not one per credential:
                # each is a 0.5 s wait for an answer that must not come).
                with pytest.raises((nats.errors.TimeoutError, nats.errors.NoRespondersError)):
                    await nc.request(op.subject, body, timeout=0.5, headers={**headers, PATH_HEADER: path})
                continue
            for what, identity, expected in _refusals(shop, op):
                sent = {**headers, **identity, PATH_HEADER: path}
                reply = await nc.request(op.subject, body, timeout=5, headers=sent)
                status = answer_of(reply)[0]
                if status != expected:
                    wrong.append(f"{op.qualified} {what}: {status} {reply.data[:200]!r}")
    finally:
        await nc.close()
    assert not wrong, "\n".join(wrong)
    if any(op.qualified not in callable_over_nats for op in INTERNAL):
        assert any("permissions violation" in str(e).lower() for e in errors), errors


async def test_refusals_are_counted_by_operation_outcome_and_caller(shop: Shop, session: aiohttp.ClientSession) -> None:
    address = next(row["address"] for row in shop.status() if row["service"] == "payments")
    async with session.post(f"http://{address}/internal/payments/void-by-key", json={"order_id": "x"}) as resp:
        assert resp.status == 401
    async with session.get(f"http://{address}/metrics") as resp:
        metrics = await resp.text()
    refused = {
        (s.labels["operation"], s.labels["outcome"], s.labels["caller"]): s.value
        for family in text_string_to_metric_families(metrics)
        for s in family.samples
        if s.name == "meshop_call_refusals_total"
    }
    assert refused[("payments.void_by_key", "unauthenticated", "none")] >= 1
    assert refused[("payments.capture", "forbidden", "console")] >= 1  # the tests above, on both transports


# In `make test-system`: ~26 s of checkouts while credentials renew, the slowest e2e test.
@pytest.mark.system
async def test_checkouts_complete_across_credential_renewals_and_the_refusals_changed_nothing(
    shop: Shop, before: dict[str, Any], session: aiohttp.ClientSession
) -> None:
    """Runs after the refusal tests (file order): the stores are as they were, then orders work."""
    assert await _snapshot(shop) == before
    orders = credential_path(_identity_dir(shop), "orders")
    first = orders.read_bytes()
    api = Api(session, shop.url)
    await api.signup()
    renewed = 0
    ends = time.monotonic() + LIFETIME_S + 5  # every credential renewed at least twice meanwhile
    while time.monotonic() < ends:
        status, accepted, _ = await api.request(
            "POST", "/orders", order_body(quantity=1), headers={"idempotency-key": uuid.uuid4().hex}
        )
        assert status == 202, accepted
        order = await api.settled(accepted["id"])
        assert order["status"] == "CONFIRMED", order
        renewed += orders.read_bytes() != first
        await asyncio.sleep(1)
    assert renewed, "the credential was never renewed during the run"
    assert "exited with code" not in shop.output()  # no process restarted to pick up a credential
