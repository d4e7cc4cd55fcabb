"""The gateway's pipeline in process, over a scripted transport: timeouts and retries per route."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any

import pytest

from meshop.gateway import config
from meshop.gateway.proxy import GatewayLimits, Proxy
from meshop.mesh.client.client import ServiceClient
from meshop.mesh.registry.base import Instance
from meshop.mesh.resilience.ratelimit import LocalLimiter
from meshop.mesh.security.tokens import SigningKey, TokenVerifier
from meshop.mesh.transport.exchange import Reply
from meshop.mesh.transport.server import ANSWER_EXTENSION


class Registry:
    def instances(self, service: str) -> list[Instance]:
        return [Instance(service=service, instance_id=f"{service}-1", address="127.0.0.1", port=9, pid=1)]


class Transport:
    """Answers each try with the next scripted (delay, status); the pool's own timeout applies."""

    def __init__(self, *script: tuple[float, int]) -> None:
        self.script = list(script)
        self.tries: list[Mapping[str, str]] = []

    async def request(
        self, host: str, port: int, method: str, target: str, headers: Mapping[str, str], body: Any, timeout_s: float
    ) -> Reply:
        self.tries.append(headers)
        delay, status = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        await asyncio.wait_for(asyncio.sleep(delay), timeout_s)  # TimeoutError, as HttpPool raises it
        return Reply(status, {"content-type": "application/json"}, b"{}")

    def send(self, *_args: object) -> bool:
        return False  # never an idle connection: every try through `request`

    async def close(self) -> None:
        pass


async def no_sleep(_seconds: float) -> None:
    pass


def gateway(routes: str, transport: Transport, *, policy_timeout_s: float = 10.0) -> Proxy:
    async def jwks() -> dict[str, Any]:
        return {"keys": [SigningKey.generate().public_jwk()]}

    client = ServiceClient(Registry(), http=transport, timeout_s=policy_timeout_s, sleep=no_sleep)  # type: ignore[arg-type]
    limits = GatewayLimits(max_body_bytes=1 << 20, max_header_bytes=16_384, timeout_s=policy_timeout_s)
    return Proxy(client, TokenVerifier(jwks), LocalLimiter(), config.parse(routes, source="test"), limits)


async def call(proxy: Proxy, method: str, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes, bytes]:
    answered: list[tuple[int, bytes, bytes]] = []
    raw = [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(b"host", b"gateway"), (b"content-length", b"2"), *raw],
        "client": ("127.0.0.1", 5000),
        "extensions": {ANSWER_EXTENSION: lambda status, head, body: answered.append((status, head, body))},
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(_message: Any) -> None:
        raise AssertionError("the lean answer extension is used")

    await proxy(scope, receive, send)
    return answered[0]


ROUTE = '[[routes]]\nprefix = "/api/shipping"\nservice = "shipping"\n'


async def test_a_route_timeout_shorter_than_the_policy_answers_504_problem_json() -> None:
    proxy = gateway(ROUTE + "timeout_s = 0.05\n", Transport((5.0, 200)))
    status, head, body = await call(proxy, "POST", "/api/shipping/quotes")
    assert status == 504
    assert b"content-type: application/problem+json" in head
    assert json.loads(body)["status"] == 504


async def test_a_route_timeout_longer_than_the_policy_waits_for_a_slow_operation() -> None:
    slow = Transport((0.3, 200))  # longer than the service policy's whole deadline (0.1 s)
    assert (await call(gateway(ROUTE, slow, policy_timeout_s=0.1), "POST", "/api/shipping/quotes"))[0] == 504
    proxy = gateway(ROUTE + "timeout_s = 30\n", Transport((0.3, 200)), policy_timeout_s=0.1)
    assert (await call(proxy, "POST", "/api/shipping/quotes"))[0] == 200


@pytest.mark.parametrize(
    ("headers", "tries", "status"),
    [
        pytest.param({}, 1, 503, id="no key: one try, its answer"),
        pytest.param({"idempotency-key": "k-1"}, 2, 200, id="with a key: retried"),
    ],
)
async def test_a_non_idempotent_request_is_retried_only_with_an_idempotency_key(
    headers: dict[str, str], tries: int, status: int
) -> None:
    transport = Transport((0.0, 503), (0.0, 200))
    proxy = gateway('[[routes]]\nprefix = "/api/users"\nservice = "users"\n', transport)
    assert (await call(proxy, "POST", "/api/users/login", headers))[0] == status
    assert len(transport.tries) == tries
    if headers:
        assert all(t.get("idempotency-key") == "k-1" for t in transport.tries)  # the same key on each try


async def test_a_client_cannot_choose_the_address_the_service_is_told() -> None:
    """The users service limits failed logins per X-Forwarded-For: the gateway sets it, whatever came."""
    transport = Transport((0.0, 401))
    proxy = gateway('[[routes]]\nprefix = "/api/users"\nservice = "users"\n', transport)
    await call(proxy, "POST", "/api/users/login", {"x-forwarded-for": "198.51.100.9"})  # names come lowercased
    (sent,) = transport.tries
    assert {k: v for k, v in sent.items() if k.lower() == "x-forwarded-for"} == {"x-forwarded-for": "127.0.0.1"}


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        pytest.param("POST", "/api/shipping/quotes", 200, id="an answer"),
        pytest.param("GET", "/api/nowhere", 404, id="a refusal of the gateway's"),
    ],
)
async def test_every_answer_carries_each_ratelimit_header_once(method: str, path: str, status: int) -> None:
    limits = '[limits]\nper_ip = "100/s"\n'
    proxy = gateway(limits + ROUTE, Transport((0.0, 200)))
    answered, head, _ = await call(proxy, method, path)
    assert answered == status
    names = [line.split(b":")[0] for line in head.split(b"\r\n") if line]
    for name in (b"ratelimit-limit", b"ratelimit-remaining", b"ratelimit-reset", b"ratelimit-policy", b"x-request-id"):
        assert names.count(name) == 1, head


async def test_a_head_is_served_from_the_get_cache() -> None:
    transport = Transport((0.0, 200))
    proxy = gateway('[[routes]]\nprefix = "/api/catalog"\nservice = "catalog"\ncache_ttl_s = 30\n', transport)
    got_status, _, got = await call(proxy, "GET", "/api/catalog/products")
    status, head, body = await call(proxy, "HEAD", "/api/catalog/products")
    assert (status, body) == (got_status, got) == (200, b"{}")  # the server sends HEAD's head only
    assert b"content-length: 2\r\n" in head
    assert len(transport.tries) == 1
