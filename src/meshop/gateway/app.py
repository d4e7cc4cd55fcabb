"""The gateway process: the shop's one public entry point.

Routes `/api/...` through the pipeline in `proxy.py`, serves the aggregated OpenAPI
document at `/openapi.json`, a viewer for it at `/docs` (rendered here: no CDN), the
console at `/console`, and a page at `/` that says what meshop is and links to them.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import msgspec
import structlog
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from meshop.contracts import contracts
from meshop.contracts.users import remote_verifier
from meshop.gateway import config
from meshop.gateway.accesslog import AccessLog
from meshop.gateway.config import RouteRules
from meshop.gateway.proxy import SECURITY_HEADERS, GatewayLimits, Proxy
from meshop.gateway.routes import RouteTable
from meshop.mesh.api.openapi import ADMIN_TAG, GATEWAY_STATUSES, build_openapi
from meshop.mesh.api.routing import Api, json_response, problem_response
from meshop.mesh.errors import ConfigError
from meshop.mesh.resilience.ratelimit import Limiter, LocalLimiter, RedisLimiter
from meshop.mesh.security import scrape_token
from meshop.mesh.security.loopback import from_loopback
from meshop.mesh.security.scrape_token import MetricsAccess
from meshop.mesh.service.lifecycle import Runtime, ServiceDefinition
from meshop.mesh.service.settings import from_env
from meshop.mesh.transport.server import Lean

log = structlog.get_logger("meshop.gateway")


class GatewaySettings(msgspec.Struct, frozen=True, kw_only=True):
    """`MESHOP_GATEWAY_*`."""

    #: The routes file (TOML, see `meshop.gateway.config`); reloaded when it changes.
    routes_file: Path | None = None
    #: Share rate-limit state between gateway replicas through this Redis (`redis://host:6379/0`).
    redis_url: str | None = None
    #: Origins allowed to call the API from a browser, comma-separated (none by default).
    cors_origins: str = ""
    max_header_bytes: Annotated[int, msgspec.Meta(ge=1024, le=1_048_576)] = 16_384
    access_log: bool = True
    #: Override the routes file's `[limits]` (e.g. "1000/s burst 2000", or "off").
    rate_limit_per_ip: str | None = None
    rate_limit_per_user: str | None = None
    #: The contracts of services built elsewhere on the mesh, to route and document beside
    #: the shop's: modules, comma-separated (`reviews.contract`); `meshop up --with` sets it.
    contracts: str = ""


_DOCS_CSP = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; frame-ancestors 'none'"


async def build(runtime: Runtime) -> Api:
    settings = from_env(GatewaySettings, "MESHOP_GATEWAY_")
    api = Api("gateway", max_body_bytes=runtime.settings.max_body_bytes)

    def configured(rules: RouteRules) -> RouteRules:
        return config.override_limits(rules, per_ip=settings.rate_limit_per_ip, per_user=settings.rate_limit_per_user)

    try:
        operations = RouteTable(contracts([m.strip() for m in settings.contracts.split(",") if m.strip()]))
    except ValueError as exc:
        raise ConfigError(f"MESHOP_GATEWAY_CONTRACTS: {exc}") from None
    services = tuple(operations.contracts)
    rules = configured(config.load(settings.routes_file, services=services))
    limiter: Limiter = LocalLimiter()
    if settings.redis_url:
        import redis.asyncio as redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        # One quick retry (a pooled connection Redis closed), not redis-py's default ten with
        # backoff: a request waits at most the limiter's timeout before it decides locally.
        client = redis.Redis.from_url(
            settings.redis_url, socket_connect_timeout=0.5, socket_timeout=0.5, retry=Retry(NoBackoff(), 1)
        )
        limiter = RedisLimiter(client)
    access_log = None
    if settings.access_log:
        access_log = AccessLog(service="gateway", instance=runtime.instance_id, fmt=runtime.settings.log_format)
        runtime.spawn(access_log.run(), name="access-log")
    verifier = remote_verifier(runtime)  # refreshed by the lifecycle, as api.verifier (below)
    proxy = Proxy(
        runtime.client,
        verifier,
        limiter,
        rules,
        GatewayLimits(
            max_body_bytes=runtime.settings.max_body_bytes,
            max_header_bytes=settings.max_header_bytes,
            timeout_s=runtime.settings.call_timeout_s,
        ),
        cors_origins=frozenset(o.strip() for o in settings.cors_origins.split(",") if o.strip()),
        hsts=runtime.settings.tls_cert_file is not None,
        debug_headers=runtime.settings.debug_headers,
        access_log=access_log,
        metrics=runtime.metrics,
        operations=operations,
    )
    api.verifier = verifier  # /metrics: loopback clients or the admin role
    if settings.routes_file is not None:

        def apply(new: RouteRules) -> None:
            proxy.rules = configured(new)

        runtime.spawn(config.watch(settings.routes_file, apply, services=services), name="routes-file")
    log.info(
        "routes", source=rules.source, routes=len(rules.rules), per_ip=str(rules.per_ip), per_user=str(rules.per_user)
    )

    async def openapi(_request: Request) -> Response:
        return _secured(json_response(shop_openapi(proxy.rules, operations, api.version)))

    def asset(name: str, media_type: str, package: str = "meshop.gateway") -> Any:
        body = (resources.files(package) / "static" / name).read_bytes()

        async def serve(_request: Request) -> Response:
            response = Response(body, media_type=media_type, headers={"cache-control": "public, max-age=300"})
            return _secured(response, csp=_DOCS_CSP)

        return serve

    token_file = runtime.settings.metrics_token_file
    access = MetricsAccess(
        token=scrape_token.load(token_file) if token_file else None, loopback=runtime.settings.metrics_loopback
    )

    async def instances(request: Request) -> Response:
        # Loopback clients (`meshop status --url`), and who may read /metrics: the scrape
        # token (monitoring from another host) or the admin role.
        if not from_loopback(request):
            refusal = await access.refusal(request, verifier)
            if refusal is not None:
                return problem_response(refusal)
        rows: list[dict[str, Any]] = []
        called = runtime.client.targets()
        for service in runtime.registry.view.services():
            # What the gateway's calls would choose from now (breaker closed, not ejected),
            # of the services it calls.
            routable = {i.instance_id for i in runtime.client.healthy(service)} if service in called else set()
            for inst in runtime.registry.instances(service):
                rows.append(
                    {
                        "service": inst.service,
                        "instance_id": inst.instance_id,
                        "pid": inst.pid,
                        "address": f"{inst.address}:{inst.port}",
                        "zone": inst.zone,
                        "version": inst.version,
                        "started_at": inst.started_at,
                        "routable": inst.instance_id in routable,
                    }
                )
        return json_response(rows)

    def front(app: ASGIApp) -> ASGIApp:
        async def gateway(scope: Scope, receive: Receive, send: Send) -> None:
            path = scope.get("path", "")
            if scope["type"] == "http" and (path.startswith("/api/") or path == "/api"):
                await proxy(scope, receive, send)
                return
            # The header limit comes before routing here too: an unknown path is 431, not 404.
            refusal = proxy.header_refusal(scope["headers"]) if scope["type"] == "http" else None
            if refusal is not None:
                await _secured(problem_response(refusal, instance=path))(scope, receive, send)
            else:
                await app(scope, receive, send)

        def lane(scope: Scope, answer: Callable[[int, bytes, bytes], None]) -> bool:
            path: str = scope["path"]
            return path.startswith("/api/") and proxy.lane(scope, answer)

        # the common request answered without a task, by the lean server's lane (docs/decisions/0010)
        return Lean(gateway, lane=lane)

    api.front = front
    _quiet_gc()
    api.extra_routes = [
        # Every GET route answers HEAD too: Starlette adds it, and the server sends no body.
        Route("/", asset("index.html", "text/html; charset=utf-8"), methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/docs", asset("docs.html", "text/html; charset=utf-8"), methods=["GET"]),
        Route("/docs/docs.js", asset("docs.js", "text/javascript; charset=utf-8"), methods=["GET"]),
        Route("/docs/docs.css", asset("docs.css", "text/css; charset=utf-8"), methods=["GET"]),
        Route("/console", asset("console.html", "text/html; charset=utf-8", "meshop.console"), methods=["GET"]),
        Route("/console/console.js", asset("console.js", "text/javascript", "meshop.console"), methods=["GET"]),
        Route("/console/console.css", asset("console.css", "text/css", "meshop.console"), methods=["GET"]),
        Route("/_meshop/instances", instances, methods=["GET"]),
    ]
    return api


def shop_openapi(rules: RouteRules, operations: RouteTable, version: str) -> dict[str, Any]:
    """The public API as the gateway serves it: every routed operation under its route's prefix.

    An operation is documented under the rule that `rules.match` picks for it (the one the
    proxy forwards it by: a method the rule admits, no longer prefix shadowing it), with the
    access the proxy enforces (the stricter of the route's and the operation's), the
    statuses the gateway answers on its own and its contract's example. Rules sharing a
    prefix merge their methods. Paths come in reading order (`_reading_order`), and the
    tags (a service's customer operations, then `admin`) in the order /docs shows them.
    """
    doc = build_openapi("shop", version, [])
    entries: list[tuple[tuple[bool, int, int], str, str, dict[str, Any]]] = []
    for rule in rules.rules:
        ops = [
            op
            for op in operations.operations()[rule.service]
            if (found := rules.match(rule.prefix + op.path, op.method)) is not None and found[0] is rule
        ]
        part = build_openapi(
            rule.service,
            version,
            ops,
            prefix=rule.prefix,
            extra_statuses=GATEWAY_STATUSES,
            min_access=rule.access,
            examples=operations.contracts[rule.service].examples,
        )
        for path, methods in part["paths"].items():
            entries.extend((_reading_order(op, operations), path, method, op) for method, op in methods.items())
        doc["components"]["schemas"].update(part["components"]["schemas"])
    paths: dict[str, dict[str, Any]] = {}
    for _, path, method, op in sorted(entries, key=lambda entry: entry[0]):  # stable: rule order breaks ties
        paths.setdefault(path, {})[method] = op
    tags = {tag for methods in paths.values() for op in methods.values() for tag in op["tags"]}
    doc["paths"] = paths
    doc["tags"] = [{"name": s, "description": c.description} for s, c in operations.contracts.items() if s in tags]
    if ADMIN_TAG in tags:
        doc["tags"].append({"name": ADMIN_TAG, "description": "Operators' operations: a token with the admin role"})
    doc["info"]["title"] = "meshop shop API"
    return doc


def _reading_order(op: dict[str, Any], operations: RouteTable) -> tuple[bool, int, int]:
    """Where an operation comes in the document: the customer's first, service by service in
    the order a customer meets them (`SERVICES`: sign up, browse, order..., then services
    built elsewhere), each service's operations as its contract declares them; then the
    admin operations, likewise."""
    service, _, name = op["operationId"].partition(".")
    declared = [o.name for o in operations.contracts[service].operations]
    return ADMIN_TAG in op["tags"], list(operations.contracts).index(service), declared.index(name)


def _quiet_gc() -> None:
    """Make the cyclic garbage collector cheap for a process that allocates per request and keeps little.

    Every request allocates a few hundred short-lived containers, so the default gen-0
    threshold (700) runs a collection every few requests, and older generations walk the
    whole heap of imported modules. Frozen start-up objects are never walked again, and a
    gen-0 threshold of 20 000 lets most request objects die by reference count first:
    measured ~21 µs less gateway CPU per request (docs/decisions/0010).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


def _secured(response: Response, *, csp: str | None = None) -> Response:
    response.headers.update(SECURITY_HEADERS)
    if csp is not None:
        response.headers["content-security-policy"] = csp
    return response


DEFINITION = ServiceDefinition(name="gateway", build=build, public=True)
