"""The typed route layer: decoding, auth, problem+json errors, OpenAPI."""

from __future__ import annotations

import asyncio
import socket
from typing import Annotated, Any

import msgspec
import pytest
import sqlalchemy as sa
from starlette.applications import Starlette
from starlette.routing import BaseRoute, Route
from starlette.testclient import TestClient
from starlette.types import ASGIApp

from meshop.mesh.api.operation import Access, Operation
from meshop.mesh.api.routing import Api, Dispatch, RequestContext, json_response
from meshop.mesh.data.store import Database
from meshop.mesh.errors import Conflict, DeadlineExceeded, NoInstancesError
from meshop.mesh.security.tokens import SigningKey, TokenIssuer, TokenVerifier
from meshop.mesh.transport.server import HttpServer


class Greeting(msgspec.Struct):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=10)]
    times: Annotated[int, msgspec.Meta(ge=1)] = 1


class Reply(msgspec.Struct):
    text: str


GREET = Operation("demo", "greet", "POST", "/greet", Greeting, Reply, Access.PUBLIC)
SECRET: Operation[None, Reply] = Operation("demo", "secret", "GET", "/secret/{id}", None, Reply, Access.USER)
ADMIN: Operation[None, Reply] = Operation("demo", "admin", "GET", "/admin", None, Reply, Access.ADMIN)
KEYED = Operation("demo", "keyed", "POST", "/keyed", Greeting, Reply, Access.PUBLIC, requires_key=True)
BOOM: Operation[None, Reply] = Operation("demo", "boom", "GET", "/boom", None, Reply, Access.PUBLIC)
CONFLICT: Operation[None, Reply] = Operation("demo", "conflict", "GET", "/conflict", None, Reply, Access.PUBLIC)
UNREACHABLE: Operation[None, Reply] = Operation(
    "demo", "unreachable", "GET", "/unreachable", None, Reply, Access.PUBLIC
)
LATE: Operation[None, Reply] = Operation("demo", "late", "GET", "/late", None, Reply, Access.PUBLIC)
NO_DATABASE: Operation[None, Reply] = Operation(
    "demo", "no_database", "GET", "/no-database", None, Reply, Access.PUBLIC
)

KEY = SigningKey.generate()


def app_of(routes: list[BaseRoute], shape: str) -> ASGIApp:
    """The routes as Starlette alone serves them, or behind `Dispatch` as a process does."""
    app = Starlette(routes=routes)
    return Dispatch(routes, app) if shape == "dispatch" else app


@pytest.fixture(params=["starlette", "dispatch"])
def shape(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def client(shape: str) -> TestClient:
    return TestClient(app_of(demo().routes(), shape), raise_server_exceptions=False)


def demo() -> Api:
    async def jwks() -> dict[str, Any]:
        return {"keys": [KEY.public_jwk()]}

    api = Api("demo", verifier=TokenVerifier(jwks), max_body_bytes=100)

    @api.implement(GREET)
    async def greet(_ctx: RequestContext, body: Greeting) -> Reply:
        return Reply(text=" ".join([f"hello {body.name}"] * body.times))

    @api.implement(SECRET)
    async def secret(ctx: RequestContext, _body: None) -> Reply:
        return Reply(text=f"{ctx.user.user_id}:{ctx.path_params['id']}")

    @api.implement(ADMIN)
    async def admin(_ctx: RequestContext, _body: None) -> Reply:
        return Reply(text="admin")

    @api.implement(KEYED)
    async def keyed(ctx: RequestContext, _body: Greeting) -> Reply:
        return Reply(text=str(ctx.idempotency_key))

    @api.implement(BOOM)
    async def boom(_ctx: RequestContext, _body: None) -> Reply:
        raise RuntimeError("secret internals")

    @api.implement(CONFLICT)
    async def conflict(_ctx: RequestContext, _body: None) -> Reply:
        raise Conflict("already there")

    @api.implement(UNREACHABLE)
    async def unreachable(_ctx: RequestContext, _body: None) -> Reply:
        raise NoInstancesError("no instance of catalog is registered")

    @api.implement(LATE)
    async def late(_ctx: RequestContext, _body: None) -> Reply:
        raise DeadlineExceeded("deadline spent calling catalog")

    @api.implement(NO_DATABASE)
    async def no_database(_ctx: RequestContext, _body: None) -> Reply:
        database = Database(f"postgresql+asyncpg://postgres@127.0.0.1:{closed_port()}/demo", name="demo")
        try:  # a server that is not there (restarting, killed): the driver's real error
            async with database.read() as conn:
                await conn.execute(sa.text("SELECT 1"))
        finally:
            await database.close()
        return Reply(text="unreachable")

    return api


def token(roles: list[str]) -> str:
    return TokenIssuer(KEY).issue("u1", roles)


def assert_problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["type"].startswith("urn:meshop:problem:")
    return body


def test_a_valid_body_is_decoded_and_the_result_encoded(client: TestClient) -> None:
    response = client.post("/greet", json={"name": "ann", "times": 2})
    assert response.status_code == 200
    assert response.json() == {"text": "hello ann hello ann"}
    # the headers a Starlette Response would have sent (the endpoint answers with its own `Reply`)
    assert response.headers["content-type"] == "application/json"
    assert response.headers["content-length"] == str(len(response.content))


def test_malformed_json_is_400(client: TestClient) -> None:
    assert_problem(client.post("/greet", content=b"{nope"), 400)


def test_an_empty_body_is_400(client: TestClient) -> None:
    assert_problem(client.post("/greet", content=b""), 400)


@pytest.mark.parametrize("body", [{}, {"name": ""}, {"name": "x", "times": 0}, {"name": 5}, [1, 2]])
def test_an_invalid_body_is_422_with_the_reason(client: TestClient, body: object) -> None:
    problem = assert_problem(client.post("/greet", json=body), 422)
    assert problem["detail"]


def test_a_body_over_the_limit_is_413(client: TestClient) -> None:
    assert_problem(client.post("/greet", json={"name": "x" * 200}), 413)


def test_a_user_operation_without_a_token_is_401(client: TestClient) -> None:
    assert_problem(client.get("/secret/7"), 401)
    assert_problem(client.get("/secret/7", headers={"authorization": "Bearer garbage"}), 401)


def test_a_user_operation_sees_the_verified_identity_and_path(client: TestClient) -> None:
    response = client.get("/secret/7", headers={"authorization": f"Bearer {token(['customer'])}"})
    assert response.json() == {"text": "u1:7"}


def test_an_admin_operation_is_403_without_the_role(client: TestClient) -> None:
    assert_problem(client.get("/admin", headers={"authorization": f"Bearer {token(['customer'])}"}), 403)
    assert client.get("/admin", headers={"authorization": f"Bearer {token(['admin'])}"}).status_code == 200


def test_an_operation_that_needs_a_key_is_400_without_one(client: TestClient) -> None:
    assert_problem(client.post("/keyed", json={"name": "a"}), 400)
    assert client.post("/keyed", json={"name": "a"}, headers={"idempotency-key": "k-1"}).json() == {"text": "k-1"}


def test_an_unhandled_error_is_500_problem_without_internals(client: TestClient) -> None:
    problem = assert_problem(client.get("/boom"), 500)
    assert "secret internals" not in str(problem)


def test_a_problem_error_keeps_its_status(client: TestClient) -> None:
    assert assert_problem(client.get("/conflict"), 409)["detail"] == "already there"


def test_a_call_to_another_service_that_failed_is_503_with_retry_after(client: TestClient) -> None:
    """The dependency's failure is not this service's bug (500): the caller may try again later."""
    response = client.get("/unreachable")
    problem = assert_problem(response, 503)
    assert response.headers["retry-after"] == "1"
    assert problem["instance"] == "/unreachable"
    assert "catalog" not in str(problem)  # which service failed is this service's business


def test_a_deadline_spent_on_a_call_to_another_service_is_504(client: TestClient) -> None:
    assert_problem(client.get("/late"), 504)


def test_a_database_that_cannot_be_reached_is_503_with_retry_after_not_500(client: TestClient) -> None:
    response = client.get("/no-database")
    problem = assert_problem(response, 503)
    assert response.headers["retry-after"] == "1"
    assert "127.0.0.1" not in str(problem)  # no host or driver message reaches the caller
    assert "refused" not in str(problem).lower()


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def _exchange(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    answer = await asyncio.wait_for(reader.read(), 5.0)  # `connection: close`: read to the end
    writer.close()
    return answer


async def test_head_is_answered_wherever_get_is_with_get_s_head_and_no_body(shape: str) -> None:
    server = HttpServer(app_of(demo().routes(), shape), host="127.0.0.1", port=0)
    port = await server.start()
    try:
        get = await _exchange(port, b"GET /conflict HTTP/1.1\r\nhost: s\r\nconnection: close\r\n\r\n")
        head = await _exchange(port, b"HEAD /conflict HTTP/1.1\r\nhost: s\r\nconnection: close\r\n\r\n")
        refused = await _exchange(port, b"DELETE /conflict HTTP/1.1\r\nhost: s\r\nconnection: close\r\n\r\n")
    finally:
        await server.stop()
    get_head, _, get_body = get.partition(b"\r\n\r\n")
    assert head.endswith(b"\r\n\r\n")  # nothing after the head
    assert head.partition(b"\r\n")[0] == get_head.partition(b"\r\n")[0] == b"HTTP/1.1 409 Conflict"
    assert f"content-length: {len(get_body)}\r\n".encode() in head
    assert b"content-type: application/problem+json" in head
    assert refused.startswith(b"HTTP/1.1 405 ")
    [allow] = [line for line in refused.split(b"\r\n") if line.lower().startswith(b"allow:")]
    assert {m.strip() for m in allow.partition(b":")[2].split(b",")} == {b"GET", b"HEAD"}


def test_openapi_documents_every_operation_and_its_errors() -> None:
    api = Api("demo")
    for op in (GREET, SECRET):
        api.implement(op)(lambda ctx, body: None)  # type: ignore[arg-type,return-value]
    doc = api.openapi()
    assert doc["openapi"] == "3.1.0"
    assert set(doc["paths"]) == {"/greet", "/secret/{id}"}
    greet = doc["paths"]["/greet"]["post"]
    assert {"200", "400", "413", "422", "500", "503"} <= set(greet["responses"])
    assert "401" in doc["paths"]["/secret/{id}"]["get"]["responses"]
    assert "Greeting" in doc["components"]["schemas"]


def test_an_operation_cannot_be_implemented_twice_or_by_another_service() -> None:
    api = Api("demo")
    api.implement(GREET)(lambda ctx, body: None)  # type: ignore[arg-type,return-value]
    with pytest.raises(ValueError, match="twice"):
        api.implement(GREET)(lambda ctx, body: None)  # type: ignore[arg-type,return-value]
    with pytest.raises(ValueError, match="does not belong"):
        Api("other").implement(GREET)


class Leave(msgspec.Struct, kw_only=True):
    reason: Annotated[str, msgspec.Meta(max_length=20)] = "none given"


LEAVE = Operation("demo", "leave", "POST", "/leave", Leave, Reply, Access.PUBLIC)


@pytest.fixture
def leaving() -> TestClient:
    api = Api("demo", max_body_bytes=100)

    @api.implement(LEAVE)
    async def leave(_ctx: RequestContext, body: Leave) -> Reply:
        return Reply(text=body.reason)

    return TestClient(Starlette(routes=api.routes()), raise_server_exceptions=False)


@pytest.mark.parametrize("empty", [b"", b" \r\n"])
def test_an_empty_body_means_every_default_when_no_field_is_required(leaving: TestClient, empty: bytes) -> None:
    response = leaving.post("/leave", content=empty)
    assert (response.status_code, response.json()) == (200, {"text": "none given"})


def test_a_body_where_no_field_is_required_is_still_validated(leaving: TestClient) -> None:
    assert leaving.post("/leave", json={"reason": "because"}).json() == {"text": "because"}
    assert_problem(leaving.post("/leave", json={"reason": "x" * 21}), 422)
    assert_problem(leaving.post("/leave", content=b"{nope"), 400)


def test_openapi_marks_a_body_optional_only_where_no_field_is_required() -> None:
    api = Api("demo")
    for op in (GREET, LEAVE):
        api.implement(op)(lambda ctx, body: None)  # type: ignore[arg-type,return-value]
    paths = api.openapi()["paths"]
    assert paths["/greet"]["post"]["requestBody"]["required"] is True
    assert paths["/leave"]["post"]["requestBody"]["required"] is False


async def test_a_client_that_goes_away_mid_body_is_a_400_not_a_server_error(shape: str) -> None:
    app = app_of(demo().routes(), shape)
    sent: list[dict[str, Any]] = []
    messages = iter([{"type": "http.request", "body": b'{"na', "more_body": True}, {"type": "http.disconnect"}])

    async def receive() -> dict[str, Any]:
        return next(messages)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/greet",
        "raw_path": b"/greet",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json")],
        "http_version": "1.1",
        "scheme": "http",
        "server": ("127.0.0.1", 80),
        "client": ("127.0.0.1", 5000),
        "root_path": "",
    }
    await app(scope, receive, send)
    assert sent[0]["status"] == 400


def test_a_result_of_none_is_an_empty_answer_with_the_operations_status() -> None:
    created = Operation("demo", "touch", "POST", "/touch", None, None, Access.PUBLIC, status=201)
    gone = Operation("demo", "drop", "DELETE", "/drop", None, None, Access.PUBLIC, status=204)
    api = Api("demo")

    @api.implement(created)
    @api.implement(gone)
    async def nothing(_ctx: RequestContext, _body: None) -> None:
        return None

    client = TestClient(Starlette(routes=api.routes()))
    touched, dropped = client.post("/touch"), client.delete("/drop")
    assert (touched.status_code, touched.content, touched.headers["content-length"]) == (201, b"", "0")
    assert "content-type" not in touched.headers
    assert (dropped.status_code, dropped.content) == (204, b"")
    assert "content-length" not in dropped.headers
    assert "content-type" not in dropped.headers


async def _answers(app: ASGIApp, requests: list[bytes]) -> list[bytes]:
    """Each request's whole answer from the mesh's HTTP server serving `app`, its date line left out."""
    server = HttpServer(app, host="127.0.0.1", port=0)
    port = await server.start()
    try:
        answers = [await _exchange(port, request) for request in requests]
    finally:
        await server.stop()
    return [b"\r\n".join(line for line in a.split(b"\r\n") if not line.startswith(b"date:")) for a in answers]


async def test_dispatch_answers_on_the_mesh_server_byte_for_byte_as_starlette_does() -> None:
    """Operations go straight to their endpoints, answered in one call (the server's answer
    extension); the rest (no such path, another method, a trailing slash, an empty parameter)
    falls to Starlette. Every answer is the same bytes either way."""
    bearer = f"authorization: Bearer {token([])}\r\n"
    requests = [
        f"{method} {path} HTTP/1.1\r\nhost: s\r\n{bearer}{extra}connection: close\r\n\r\n".encode() + body
        for method, path, extra, body in [
            ("GET", "/secret/42", "", b""),
            ("POST", "/greet", "content-length: 27\r\n", b'{"name": "ann", "times": 2}'),
            ("POST", "/greet", "content-length: 2\r\n", b"{]"),
            ("GET", "/secret/", "", b""),
            ("GET", "/secret/42/", "", b""),
            ("GET", "/nowhere", "", b""),
            ("PUT", "/greet", "", b""),
            ("HEAD", "/secret/7", "", b""),
            ("GET", "/boom", "", b""),
        ]
    ]
    routes = demo().routes()
    starlette = Starlette(routes=routes)
    fallen: list[str] = []

    async def fallback(scope: Any, receive: Any, send: Any) -> None:
        fallen.append(f"{scope['method']} {scope['path']}")
        await starlette(scope, receive, send)

    direct = await _answers(Dispatch(routes, fallback), requests)
    assert direct == await _answers(Starlette(routes=routes), requests)
    assert fallen == ["GET /secret/", "GET /secret/42/", "GET /nowhere", "PUT /greet", "HEAD /secret/7"]
    assert direct[0].startswith(b"HTTP/1.1 200 OK\r\n")
    assert direct[0].endswith(b'{"text":"u1:42"}')
    assert direct[1].endswith(b'{"text":"hello ann hello ann"}')
    assert [a.partition(b"\r\n")[0].split(b" ")[1] for a in direct] == [
        b"200",
        b"200",
        b"400",
        b"404",
        b"307",
        b"404",
        b"405",
        b"200",
        b"500",
    ]


def test_a_route_before_an_operation_on_its_path_keeps_it() -> None:
    """A process's own routes come first (`/ready`, `extra_routes`): what they take, Starlette
    answers, though an operation's template (`/{id}`) matches it too."""

    async def own(_request: Any) -> Any:
        return json_response({"own": True})

    item: Operation[None, Reply] = Operation("demo", "item", "GET", "/{id}", None, Reply, Access.PUBLIC)
    api = demo()

    @api.implement(item)
    async def get_item(ctx: RequestContext, _body: None) -> Reply:
        return Reply(text=ctx.path_params["id"])

    routes = [
        Route("/ready", own, methods=["GET"]),
        Route("/greet", own, methods=["GET"]),
        Route("/secret/{name}", own, methods=["GET"]),
        *api.routes(),
    ]
    fallen: list[str] = []
    starlette = Starlette(routes=routes)

    async def fallback(scope: Any, receive: Any, send: Any) -> None:
        fallen.append(scope["path"])
        await starlette(scope, receive, send)

    client = TestClient(Dispatch(routes, fallback))
    assert client.get("/ready").json() == {"own": True}
    assert client.get("/secret/1").json() == {"own": True}
    assert client.post("/greet", json={"name": "bo"}).json() == {"text": "hello bo"}  # only GET was taken
    assert client.get("/thing").json() == {"text": "thing"}
    assert fallen == ["/ready", "/secret/1"]


def test_operations_with_templates_alike_are_each_dispatched() -> None:
    """`/internal/payments/{id}/capture` and `…/refund`: one does not hide the other."""
    api = Api("demo")
    for action in ("capture", "refund"):
        op: Operation[None, Reply] = Operation(
            "demo", action, "POST", f"/things/{{id}}/{action}", None, Reply, Access.PUBLIC
        )

        async def act(ctx: RequestContext, _body: None, action: str = action) -> Reply:
            return Reply(text=f"{action} {ctx.path_params['id']}")

        api.implement(op)(act)
    routes = api.routes()

    async def nowhere(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError(f"{scope['path']} fell to Starlette")

    client = TestClient(Dispatch(routes, nowhere))
    assert client.post("/things/7/capture").json() == {"text": "capture 7"}
    assert client.post("/things/8/refund").json() == {"text": "refund 8"}
