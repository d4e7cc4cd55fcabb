"""Operations over NATS request-reply, served by the same endpoints as HTTP."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Annotated

import msgspec
import nats
import nats.errors
import pytest
from nats.aio.msg import Msg
from starlette.responses import Response

from meshop.mesh.api.operation import Access, Operation
from meshop.mesh.api.routing import Api, Reply, RequestContext
from meshop.mesh.client.client import ServiceClient
from meshop.mesh.errors import TransportError, Unprocessable
from meshop.mesh.headers import CALL_HEADER, DEADLINE_HEADER, IDENTITY_HEADER, PATH_HEADER, STATUS_HEADER
from meshop.mesh.registry import Instance, StaticRegistry
from meshop.mesh.resilience.config import Policies
from meshop.mesh.security.identity import CallerVerifier, Issuer, TokenMinter, TrustBundle
from meshop.mesh.telemetry import tracecontext
from meshop.mesh.transport.nats import Requests, answer_of, reply_headers, request_headers, serve, unpack

pytestmark = pytest.mark.integration


class Add(msgspec.Struct):
    amount: Annotated[int, msgspec.Meta(ge=1)]


class Total(msgspec.Struct):
    account: str
    total: int
    served_by: str


ADD = Operation("ledger", "add", "POST", "/accounts/{account}/add", Add, Total, Access.PUBLIC, idempotent=True)


@pytest.fixture
async def ledger(nats_url: str) -> AsyncIterator[tuple[str, StaticRegistry]]:
    nc = await nats.connect(nats_url)
    registry = StaticRegistry()
    for name in ("n1", "n2"):
        api = Api("ledger")

        def make(name: str):  # type: ignore[no-untyped-def]
            async def add(ctx: RequestContext, body: Add) -> Total:
                return Total(account=ctx.path_params["account"], total=body.amount * 10, served_by=name)

            return add

        api.implement(ADD)(make(name))
        await serve(nc, api, name)
        await registry.register(Instance(service="ledger", instance_id=name, address="127.0.0.1", port=1, pid=0))
    yield nats_url, registry
    await nc.close()


async def test_a_call_over_nats_reaches_the_chosen_instance_with_its_path_params(
    ledger: tuple[str, StaticRegistry],
) -> None:
    url, registry = ledger
    nc = await nats.connect(url)
    try:
        policies = Policies({"default": {"transport": "nats", "balancer": "round_robin"}})
        client = ServiceClient(registry, nc=nc, policies=policies)
        answers = [await client.call(ADD, Add(amount=2), path_params={"account": "acc 1"}) for _ in range(10)]
    finally:
        await nc.close()
    assert {a.account for a in answers} == {"acc 1"}
    assert {a.total for a in answers} == {20}
    assert {a.served_by for a in answers} == {"n1", "n2"}


async def test_validation_errors_come_back_typed_over_nats(ledger: tuple[str, StaticRegistry]) -> None:
    url, registry = ledger
    nc = await nats.connect(url)
    try:
        client = ServiceClient(registry, nc=nc)
        with pytest.raises(Unprocessable):
            await client.call(ADD, {"amount": 0}, path_params={"account": "a"}, transport="nats")
    finally:
        await nc.close()


async def test_an_instance_nobody_serves_is_skipped_like_a_refused_connection(
    ledger: tuple[str, StaticRegistry],
) -> None:
    url, registry = ledger
    await registry.register(Instance(service="ledger", instance_id="gone", address="127.0.0.1", port=1, pid=0))
    nc = await nats.connect(url)
    try:
        client = ServiceClient(registry, nc=nc, policies=Policies({"default": {"transport": "nats"}}))
        answers = [await client.call(ADD, Add(amount=1), path_params={"account": "a"}) for _ in range(12)]
        assert {a.served_by for a in answers} <= {"n1", "n2"}
        only_gone = StaticRegistry([Instance(service="ledger", instance_id="gone", address="h", port=1, pid=0)])
        lonely = ServiceClient(only_gone, nc=nc, policies=Policies({"default": {"transport": "nats"}}))
        with pytest.raises(TransportError):
            await lonely.call(ADD, Add(amount=1), path_params={"account": "a"})
    finally:
        await nc.close()


BALANCE = Operation("ledger", "balance", "GET", "/balance", None, Total, Access.PUBLIC, idempotent=True)


async def test_a_request_names_its_path_only_when_it_is_not_the_operations_own(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    seen: list[dict[str, str]] = []
    try:
        api = Api("ledger")

        @api.implement(BALANCE)
        async def balance(ctx: RequestContext, _body: None) -> Total:
            return Total(account=ctx.query_str("account") or "-", total=7, served_by="n1")

        await serve(nc, api, "n1")

        async def spy(msg: Msg) -> None:
            seen.append(dict(msg.headers or {}))

        await nc.subscribe(f"{BALANCE.subject}.n1", cb=spy)
        registry = StaticRegistry([Instance(service="ledger", instance_id="n1", address="127.0.0.1", port=1, pid=0)])
        client = ServiceClient(registry, nc=nc, policies=Policies({"default": {"transport": "nats"}}))
        plain = await client.call(BALANCE)
        queried = await client.call(BALANCE, query={"account": "a b"})
    finally:
        await nc.close()
    assert (plain.account, queried.account) == ("-", "a b")
    assert [list(h) for h in seen] == [[CALL_HEADER], [CALL_HEADER]]  # every field in one header
    fields = [_unpacked(h) for h in seen]
    assert [PATH_HEADER in f for f in fields] == [False, True]
    assert fields[1][PATH_HEADER] == "/balance?account=a+b"
    assert all(DEADLINE_HEADER in f for f in fields)


def _unpacked(headers: dict[str, str]) -> dict[str, str]:
    fields: dict[str, str] = {}
    unpack(headers[CALL_HEADER], fields)
    return fields


TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_a_request_packs_the_meshs_own_fields_into_one_header_and_keeps_the_others() -> None:
    made = {
        "content-type": "application/json",
        "authorization": "Bearer a.b.c",
        "idempotency-key": "key 1",
        tracecontext.HEADER: TRACEPARENT,
        IDENTITY_HEADER: "cert.sig.token.sig",
        DEADLINE_HEADER: "2500",
    }
    sent = request_headers(made, "/accounts/a%20b/add?x=1")
    assert sent == {
        "authorization": "Bearer a.b.c",
        "idempotency-key": "key 1",
        CALL_HEADER: f"t={TRACEPARENT} i=cert.sig.token.sig d=2500 p=/accounts/a%20b/add?x=1",
    }
    # what the server reads: every field back under its own name; content-type is not sent
    unpacked = {k: v for k, v in sent.items() if k != CALL_HEADER}
    unpack(sent[CALL_HEADER], unpacked)
    assert unpacked == {k: v for k, v in made.items() if k != "content-type"} | {PATH_HEADER: "/accounts/a%20b/add?x=1"}
    assert request_headers({}, None) is None
    assert request_headers({"content-type": "application/json"}, None) is None
    # a value with a space (none the mesh makes) keeps its own header, whole
    assert request_headers({DEADLINE_HEADER: "1 2"}, "/a b") == {DEADLINE_HEADER: "1 2", PATH_HEADER: "/a b"}


def test_a_packed_header_sets_only_the_fields_it_knows() -> None:
    headers = {"authorization": "Bearer x"}
    unpack("d=10 x=1 nonsense t= i=abc= p", headers)
    assert headers == {
        "authorization": "Bearer x",
        DEADLINE_HEADER: "10",
        tracecontext.HEADER: "",
        IDENTITY_HEADER: "abc=",
    }


ECHO = Operation(
    "ledger", "echo", "GET", "/internal/echo/{word}", None, dict[str, str | None], callers=("orders",), idempotent=True
)


async def test_an_identified_call_reaches_the_handler_packed_as_a_raw_clients_separate_headers_do(
    nats_url: str,
) -> None:
    root = Issuer.generate()
    nc = await nats.connect(nats_url)
    try:
        api = Api("ledger")
        api.callers = CallerVerifier("ledger", TrustBundle({root.kid: root.key.public_key()}))

        @api.implement(ECHO)
        async def echo(ctx: RequestContext, _body: None) -> dict[str, str | None]:
            return {
                "word": ctx.path_params["word"],
                "trace": tracecontext.trace_id(tracecontext.current()),
                "deadline": "set" if ctx.deadline is not None else None,
            }

        await serve(nc, api, "n1")
        registry = StaticRegistry([Instance(service="ledger", instance_id="n1", address="127.0.0.1", port=1, pid=0)])
        client = ServiceClient(registry, nc=nc, policies=Policies({"default": {"transport": "nats"}}))
        client.identity = TokenMinter(root.issue("orders"))
        with tracecontext.use_traceparent(TRACEPARENT):
            by_mesh = await client.call(ECHO, path_params={"word": "a b"})
        assert by_mesh == {"word": "a b", "trace": TRACEPARENT[3:35], "deadline": "set"}

        # a raw nats-py client names each field in its own header (docs/decisions/0040)
        identity = TokenMinter(root.issue("orders")).header("ledger")
        raw_headers = {
            IDENTITY_HEADER: identity,
            tracecontext.HEADER: TRACEPARENT,
            DEADLINE_HEADER: "5000",
            PATH_HEADER: "/internal/echo/c",
        }
        raw = await nc.request(f"{ECHO.subject}.n1", b"", timeout=5, headers=raw_headers)
        assert answer_of(raw)[0] == 200
        assert msgspec.json.decode(raw.data) == {"word": "c", "trace": TRACEPARENT[3:35], "deadline": "set"}
        for refused in ({k: v for k, v in raw_headers.items() if k != IDENTITY_HEADER}, {CALL_HEADER: "d=5000"}):
            answer = await nc.request(f"{ECHO.subject}.n1", b"", timeout=5, headers=refused)
            assert answer_of(answer)[0] == 401
    finally:
        await nc.close()


def _reply(headers: dict[str, str] | None, data: bytes) -> Msg:
    return Msg(_client=None, subject="_INBOX.x", data=data, headers=headers)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("response", "sent"),
    [
        (Response(b'{"a":1}', 200, media_type="application/json"), None),
        (Response(b"", 200), None),
        (
            Response(b'{"a":1}', 201, media_type="application/json"),
            {STATUS_HEADER: "201", "content-type": "application/json"},
        ),
        (Response(b"", 204), {STATUS_HEADER: "204"}),
        (
            Response(b"<p>", 200, media_type="text/html"),
            {STATUS_HEADER: "200", "content-type": "text/html; charset=utf-8"},
        ),
        (
            Response(b"{}", 503, media_type="application/problem+json", headers={"retry-after": "1"}),
            {STATUS_HEADER: "503", "content-type": "application/problem+json", "retry-after": "1"},
        ),
        (
            Response(b"{}", 200, media_type="application/json", headers={"retry-after": "1"}),
            {STATUS_HEADER: "200", "content-type": "application/json", "retry-after": "1"},
        ),
        # what a handler returned, as its endpoint answers it
        (Reply(b'{"a":1}', 200), None),
        (Reply(b"", 200), None),
        (Reply(b'{"a":1}', 201), {STATUS_HEADER: "201", "content-type": "application/json"}),
        (Reply(b"", 204), {STATUS_HEADER: "204"}),
    ],
)
def test_a_reply_carries_headers_only_when_it_is_not_a_plain_200(
    response: Reply | Response, sent: dict[str, str] | None
) -> None:
    assert reply_headers(response) == sent
    status, headers = answer_of(_reply(sent, bytes(response.body)))
    assert status == response.status_code
    content_type = "application/json" if response.body else None
    if isinstance(response, Response):
        content_type = response.headers.get("content-type")
        assert headers.get("retry-after") == response.headers.get("retry-after")
    assert headers.get("content-type") == content_type


def test_a_reply_whose_headers_name_no_status_is_a_bad_gateway() -> None:
    assert answer_of(_reply({"content-type": "application/json"}, b"{}"))[0] == 502
    assert answer_of(_reply({STATUS_HEADER: "two hundred"}, b"{}"))[0] == 502


async def test_requests_share_one_inbox_and_each_gets_its_own_reply(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    try:

        async def echo(msg: Msg) -> None:
            await asyncio.sleep(0.05 if msg.data == b"slow" else 0)
            await msg.respond(msg.data.upper())

        await nc.subscribe("echo", cb=echo)
        requests = Requests(nc)
        answers = await asyncio.gather(
            *(requests.request("echo", body, headers={}, timeout_s=2.0) for body in (b"slow", b"a", b"b"))
        )
        assert [a.data for a in answers] == [b"SLOW", b"A", b"B"]
        assert len(nc._subs) == 2  # the responder's and one inbox for every request
    finally:
        await nc.close()


async def test_a_request_nobody_takes_fails_at_once_and_an_unanswered_one_times_out(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    try:
        requests = Requests(nc)
        started = time.monotonic()
        with pytest.raises(nats.errors.NoRespondersError):
            await requests.request("nobody.listens", b"", headers={}, timeout_s=5.0)
        assert time.monotonic() - started < 1.0

        gave_up, answered = asyncio.Event(), asyncio.Event()

        async def late(msg: Msg) -> None:
            await gave_up.wait()
            await msg.respond(b"too late")
            answered.set()

        async def echo(msg: Msg) -> None:
            await msg.respond(msg.data)

        await nc.subscribe("late", cb=late)
        await nc.subscribe("echo", cb=echo)
        with pytest.raises(nats.errors.TimeoutError):
            await requests.request("late", b"", headers={}, timeout_s=0.1)
        gave_up.set()
        await asyncio.wait_for(answered.wait(), 5)  # its reply arrives with nobody waiting: dropped
        # One inbox, read in order: once the next request's reply is in, the late one was handled.
        assert (await requests.request("echo", b"next", headers={}, timeout_s=5.0)).data == b"next"
        assert requests._pending == {}
    finally:
        await nc.close()
