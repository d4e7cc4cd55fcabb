"""The service client: call another service's operations through the registry.

One pooled aiohttp session per process. Instances are resolved from the registry's
local view and balanced per target service. Errors come back typed: a problem+json
answer is rebuilt into the `ProblemError` the peer raised; a failure to connect is a
`TransportError`. The caller's deadline travels downstream in a header.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import aiohttp
import msgspec

from meshop.mesh.balancing import Balancer, RoundRobin
from meshop.mesh.errors import (
    PROBLEM_CONTENT_TYPE,
    BadGateway,
    DeadlineExceeded,
    NoInstancesError,
    Problem,
    TransportError,
    error_from_problem,
)
from meshop.mesh.operation import Operation
from meshop.mesh.registry.base import Instance, Registry
from meshop.mesh.routing import DEADLINE_HEADER, IDEMPOTENCY_HEADER

Resp = TypeVar("Resp")

_encoder = msgspec.json.Encoder()
_problem = msgspec.json.Decoder(Problem)


def new_session(*, limit: int = 512) -> aiohttp.ClientSession:
    """The process's pooled HTTP session (keep-alive, no cookie jar, no env proxies)."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=limit, limit_per_host=0, ttl_dns_cache=300, enable_cleanup_closed=True),
        cookie_jar=aiohttp.DummyCookieJar(),
        trust_env=False,
        auto_decompress=False,
    )


class ServiceClient:
    """Calls operations of other services over HTTP, balanced across their instances."""

    def __init__(
        self,
        registry: Registry,
        session: aiohttp.ClientSession,
        *,
        timeout_s: float = 10.0,
        balancer_factory: Callable[[], Balancer] = RoundRobin,
    ) -> None:
        self._registry = registry
        self._session = session
        self._timeout_s = timeout_s
        self._balancer_factory = balancer_factory
        self._balancers: dict[str, Balancer] = {}

    @property
    def session(self) -> aiohttp.ClientSession:
        return self._session

    def pick(self, service: str) -> Instance:
        """Choose the instance of `service` the next request goes to."""
        candidates = self._registry.instances(service)
        if not candidates:
            raise NoInstancesError(f"no instance of {service!r} is registered")
        balancer = self._balancers.get(service)
        if balancer is None:
            balancer = self._balancers[service] = self._balancer_factory()
        return balancer.pick(candidates)

    def balancer(self, service: str) -> Balancer | None:
        return self._balancers.get(service)

    async def call(
        self,
        op: Operation[Any, Resp],
        body: Any = None,
        *,
        path_params: Mapping[str, Any] | None = None,
        query: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
        token: str | None = None,
        timeout_s: float | None = None,
        deadline: float | None = None,
    ) -> Resp:
        """Call `op` on one instance of its service and return the decoded response.

        `deadline` is a `time.monotonic()` instant (e.g. the incoming request's); the
        call gives up at the earlier of it and `timeout_s`.
        """
        if op.requires_key and not idempotency_key:
            raise ValueError(f"{op.qualified} requires an idempotency key")
        budget = self._timeout_s if timeout_s is None else timeout_s
        if deadline is not None:
            budget = min(budget, deadline - time.monotonic())
        if budget <= 0:
            raise DeadlineExceeded(f"no time left to call {op.qualified}")
        headers = {DEADLINE_HEADER: str(int(budget * 1000))}
        if op.request is not None:
            headers["content-type"] = "application/json"
        if idempotency_key:
            headers[IDEMPOTENCY_HEADER] = idempotency_key
        if token:
            headers["authorization"] = f"Bearer {token}"
        instance = self.pick(op.service)
        url = instance.url + op.render_path(path_params)
        data = _encoder.encode(body) if op.request is not None else None
        try:
            async with asyncio.timeout(budget):
                async with self._session.request(op.method, url, data=data, headers=headers, params=query) as resp:
                    payload = await resp.read()
                    status = resp.status
                    content_type = resp.headers.get("content-type", "")
                    retry_after = resp.headers.get("retry-after")
        except TimeoutError:
            raise TransportError(f"{op.qualified} timed out after {budget:.3f}s", sent=True) from None
        except aiohttp.ClientConnectorError as exc:
            raise TransportError(f"cannot connect to {op.service} at {instance.url}: {exc}") from exc
        except aiohttp.ClientError as exc:
            raise TransportError(f"{op.qualified} failed: {exc}", sent=True) from exc
        if status >= 400:
            raise _error(op, status, content_type, payload, retry_after)
        if op.response is None or not payload:
            return None  # type: ignore[return-value]
        try:
            return msgspec.json.decode(payload, type=op.response)
        except msgspec.DecodeError as exc:
            raise BadGateway(f"{op.qualified} answered with an invalid body: {exc}") from None


def _error(
    op: Operation[Any, Any], status: int, content_type: str, payload: bytes, retry_after: str | None
) -> Exception:
    retry_after_s = float(retry_after) if retry_after and retry_after.isdigit() else None
    if content_type.startswith(PROBLEM_CONTENT_TYPE):
        try:
            return error_from_problem(_problem.decode(payload), retry_after_s=retry_after_s)
        except msgspec.DecodeError:
            pass
    return error_from_problem(
        Problem(type="about:blank", title=f"{op.qualified} answered {status}", status=status),
        retry_after_s=retry_after_s,
    )
