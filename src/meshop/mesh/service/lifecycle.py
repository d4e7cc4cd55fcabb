"""Service lifecycle: one meshop process from start to a drained, deregistered stop.

start: database (create, migrate and initialise once, under a lock) → NATS → registry →
HTTP client → routes → bind HTTP → register → READY.
stop: fail readiness → deregister → drain in-flight requests → close everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import enum
import gc
import os
import signal
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec
import nats
import structlog
from nats.aio.client import Client as NatsClient
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp

from meshop.mesh.api.operation import Operation
from meshop.mesh.api.routing import Api, Faults, RequestContext, json_response, problem_response, serving
from meshop.mesh.client.client import ServiceClient
from meshop.mesh.client.metrics import ClientMetrics
from meshop.mesh.client.zones import Locality
from meshop.mesh.errors import (
    ConfigError,
    Forbidden,
    MethodNotAllowed,
    NotFound,
    ProblemError,
    ServiceUnavailable,
    StateError,
    Unprocessable,
)
from meshop.mesh.events.admin import (
    ConsumerStats,
    OutboxStats,
    ReplayResult,
    consumers_operation,
    outbox_operation,
    replay_operation,
)
from meshop.mesh.registry import Instance, NatsKvRegistry
from meshop.mesh.resilience.config import Policies
from meshop.mesh.security import scrape_token
from meshop.mesh.security.identity import CredentialFiles, provision
from meshop.mesh.security.loopback import from_loopback
from meshop.mesh.security.nats_auth import LIVENESS
from meshop.mesh.security.nats_auth import servers as nats_servers
from meshop.mesh.security.revocation import RevocationList
from meshop.mesh.security.scrape_token import MetricsAccess
from meshop.mesh.security.tokens import TokenVerifier
from meshop.mesh.service.settings import Settings
from meshop.mesh.telemetry import tracing
from meshop.mesh.telemetry.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from meshop.mesh.telemetry.metrics import Metrics
from meshop.mesh.telemetry.tracing import Tracing
from meshop.mesh.transport import nats as transport_nats
from meshop.mesh.transport.server import HttpServer

# Imported where they are used: a process without a database (the gateway, the console)
# never loads SQLAlchemy, ~17 MB of its memory.
if TYPE_CHECKING:
    from meshop.mesh.data.store import Database
    from meshop.mesh.events.consumer import Consumer, Handler, Reset
    from meshop.mesh.events.envelope import EventType
    from meshop.mesh.events.outbox import OutboxRelay

log = structlog.get_logger("meshop.service")

A = TypeVar("A")

#: How long closing one resource may take when a process stops: a broker or database
#: that is gone must not keep the process alive.
CLOSE_TIMEOUT_S = 3.0
#: How often a process looks for a renewed credential or trust bundle (a stat of two files).
CREDENTIAL_CHECK_S = 2.0
#: nats-py's own bound on draining the connection, below CLOSE_TIMEOUT_S: a subscription
#: whose queue does not empty in time then ends inside nats-py, which collects its
#: cancelled drain, rather than being cancelled from outside, after which asyncio logs
#: the drain's unread error with a traceback.
NATS_DRAIN_TIMEOUT_S = 2


class State(enum.Enum):
    """A service process's lifecycle state; only the transitions in `_ALLOWED` are legal."""

    CREATED = "created"
    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"
    STOPPED = "stopped"


_ALLOWED = {
    State.CREATED: {State.STARTING},
    State.STARTING: {State.READY, State.DRAINING},
    State.READY: {State.DRAINING},
    State.DRAINING: {State.STOPPED},
    State.STOPPED: set(),
}


@dataclass(frozen=True)
class ServiceDefinition:
    """What makes a service: its name, how to wire its handlers, its database's shape."""

    name: str
    build: Callable[[Runtime], Awaitable[Api]]
    _: KW_ONLY
    #: Folder of Alembic versions; None for a service without a database.
    migrations: Path | None = None
    #: One-time initialisation (seed data, keys), run under the init lock after migrating.
    initialize: Callable[[Runtime], Awaitable[None]] | None = None
    #: Builds the verifier of identity tokens (None: the service has no user operations).
    verifier: Callable[[Runtime], TokenVerifier] | None = None
    #: The service emits events: run its outbox relay (GET /admin/outbox, which every
    #: service with a database serves, then reports the relay's backlog).
    outbox: bool = False
    #: A public listener (the gateway): served over TLS when a certificate is configured.
    public: bool = False
    #: Builds the service's adapters to what lies outside the mesh (a payment provider, a
    #: carrier) from the settings, once at start; `build` takes them with `runtime.adapter`.
    #: The one way adapters are injected: a test replaces this factory with one returning
    #: its fakes (`dataclasses.replace(DEFINITION, adapters=...)`).
    adapters: Callable[[Settings], object] | None = None
    #: The module of its contract (its Operations and EventTypes), for a service defined
    #: outside the shop: `meshop up --with` has the gateway route and document it.
    contract: ModuleType | None = None
    #: The operations of other services it calls: its NATS user may request these and
    #: no others (`meshop.runtime.nats_users`).
    calls: tuple[Operation[Any, Any], ...] = ()
    #: Its consumers by name, each with the events it applies (EventTypes of one source):
    #: its NATS user may read these streams and no others, and `Runtime.consume` starts
    #: only a consumer declared here.
    consumes: Mapping[str, Sequence[EventType[Any]]] = field(default_factory=dict)


@dataclass
class Runtime:
    """The dependencies a service's code is handed (nothing is a module global)."""

    settings: Settings
    service: str
    instance_id: str
    nc: NatsClient
    registry: NatsKvRegistry
    client: ServiceClient
    _: KW_ONLY
    db: Database | None = None
    #: Access tokens revoked by logging out (every process denies them until they expire).
    revocations: RevocationList | None = None
    #: The outbox relay, when the service emits events (woken by every commit that emitted).
    outbox: OutboxRelay | None = None
    consumers: list[Consumer] = field(default_factory=list)
    #: This process's Prometheus metrics (`/metrics`).
    metrics: Metrics = field(default_factory=lambda: Metrics("meshop"))
    #: What the definition's `adapters` factory built (None: the service has none).
    adapters: object = None
    #: The consumers its definition declares (None: whatever `consume` is given).
    declared: Mapping[str, Sequence[EventType[Any]]] | None = None
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set)

    @property
    def database(self) -> Database:
        if self.db is None:
            raise StateError(f"{self.service} has no database")
        return self.db

    def adapter(self, kind: type[A]) -> A:
        """The service's adapters (see `ServiceDefinition.adapters`), checked to be a `kind`."""
        if not isinstance(self.adapters, kind):
            found = type(self.adapters)
            raise StateError(
                f"{self.service}'s adapters are {found.__module__}.{found.__qualname__}, "
                f"not {kind.__module__}.{kind.__qualname__}"
            )
        return self.adapters

    def consume(
        self,
        name: str,
        *,
        handler: Handler,
        events: Sequence[EventType[Any]] | None = None,
        reset: Reset | None = None,
    ) -> Consumer:
        """Apply the events of consumer `name` (EventTypes of one source) to this service's
        database, each once: `events`, or those its definition declares (`consumes`).

        `handler` gets each event with its data decoded into its EventType's Struct; one
        that does not decode is dead-lettered. The consumer is durable and shared by this
        service's replicas (named `<service>.<name>`); it runs until stop and is listed at
        `GET /admin/consumers`.
        """
        from meshop.mesh.events.consumer import Consumer

        consumer = Consumer(
            self.database,
            self.nc,
            name=f"{self.service}.{name}",
            events=self.declared_events(name, events),
            handler=handler,
            reset=reset,
            max_deliver=self.settings.consumer_max_deliver,
            replicas=self.settings.nats_replicas,
        )
        self.consumers.append(consumer)
        self.spawn(consumer.run_forever(), name=f"consumer-{name}")
        return consumer

    def declared_events(self, name: str, events: Sequence[EventType[Any]] | None) -> list[EventType[Any]]:
        """The events consumer `name` applies; ConfigError when its definition does not
        declare it as given (its NATS user could not read them)."""
        if self.declared is None:
            if events is None:
                raise ConfigError(f"{self.service}.consume({name!r}): no events given, and none declared")
            return list(events)
        declared = self.declared.get(name)
        if declared is None:
            known = ", ".join(self.declared) or "none"
            raise ConfigError(
                f"{self.service} consumes {name!r}, which its definition does not declare (consumes: {known})"
            )
        if events is not None and set(events) != set(declared):
            raise ConfigError(f"{self.service}.consume({name!r}): the events differ from its definition's")
        return list(declared)

    def spawn(self, coro: Coroutine[Any, Any, Any], *, name: str) -> asyncio.Task[Any]:
        """Run background work owned by this process; it is cancelled at stop."""
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._reap)
        return task

    def _reap(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed", task=task.get_name(), error=repr(task.exception()))

    async def cancel_tasks(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _release_startup_memory() -> None:
    """Give the OS back what start-up (imports, migrations check, seeding) freed.

    glibc keeps freed heap pages for reuse; after start-up most are never reused, so
    `malloc_trim` shrinks a process's RSS by a few MB (measured: the RSS budget is 80 MB).
    """
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class Service:
    """Runs one instance of a service."""

    def __init__(self, definition: ServiceDefinition, settings: Settings) -> None:
        self.definition = definition
        self.settings = settings
        self.instance_id = settings.instance_id or uuid.uuid4().hex[:12]
        self.state = State.CREATED
        self.runtime: Runtime | None = None
        self.instance: Instance | None = None
        self._server: HttpServer | None = None
        self._closers: list[Callable[[], Awaitable[Any]]] = []

    def _move(self, new: State) -> None:
        if new not in _ALLOWED[self.state]:
            raise StateError(f"cannot go from {self.state.value} to {new.value}")
        self.state = new

    @property
    def port(self) -> int:
        return self._server.port if self._server else 0

    async def start(self) -> None:
        self._move(State.STARTING)
        started = time.monotonic()
        name = self.definition.name
        settings = self.settings
        if not settings.nats_url:
            raise ConfigError("MESHOP_NATS_URL is not set (meshop up sets it for its processes)")
        # First: a malformed adapter setting fails the start at once, with its name.
        adapters = self.definition.adapters(settings) if self.definition.adapters is not None else None
        try:
            db = await self._open_database()
            login = settings.nats_login()  # this service's NATS user (mesh.security.nats_auth)
            nc = await nats.connect(
                nats_servers(settings.nats_url),
                name=f"{name}-{self.instance_id}",
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.5,
                disconnected_cb=self._nats_disconnected,
                reconnected_cb=self._nats_reconnected,
                error_cb=self._nats_error,
                drain_timeout=NATS_DRAIN_TIMEOUT_S,
                **LIVENESS,
                **login.options(),
            )
            self._closers.append(lambda: nc.drain() if nc.is_connected else nc.close())
            if settings.tracing:
                tracer = Tracing(name, self.instance_id)
                tracer.publish_to(nc)
                tracing.install(tracer)
                self._closers.append(tracer.close)  # closers run in reverse: before NATS drains
            registry = NatsKvRegistry(
                nc,
                servers=settings.nats_url,
                bucket=settings.registry_bucket,
                ttl_s=settings.registry_ttl_s,
                heartbeat_s=settings.heartbeat_s,
                login=login,
                replicas=settings.nats_replicas,
            )
            await registry.start()
            self._closers.append(registry.stop)
            revocations = RevocationList(nc, replicas=settings.nats_replicas)
            await revocations.start()
            self._closers.append(revocations.stop)
            policies = Policies.load(settings.policies_file)
            locality = (
                Locality(zone=settings.zone, overload_in_flight=settings.zone_overload_in_flight)
                if settings.zone_aware
                else None
            )
            client = ServiceClient(
                registry, policies=policies, timeout_s=settings.call_timeout_s, nc=nc, locality=locality
            )
            self._closers.append(client.close)
            credentials = self._credentials()
            client.identity = credentials.minter
            metrics = Metrics(name)
            if settings.metrics:
                client.metrics = metrics
                metrics.registry.register(ClientMetrics(client))
            self.runtime = runtime = Runtime(
                settings=settings,
                service=name,
                instance_id=self.instance_id,
                nc=nc,
                registry=registry,
                client=client,
                db=db,
                revocations=revocations,
                metrics=metrics,
                adapters=adapters,
                declared=self.definition.consumes,
            )
            self._closers.append(runtime.cancel_tasks)
            runtime.spawn(client.check_health_forever(), name="health-checks")
            if db is not None:
                await self._initialize(db, runtime)
                if self.definition.outbox:
                    from meshop.mesh.events.outbox import OutboxRelay

                    runtime.outbox = OutboxRelay(
                        db,
                        nc,
                        service=name,
                        wake_on_commit=settings.outbox_wake,
                        replicas=settings.nats_replicas,
                        linger_s=settings.outbox_linger_s,
                    )
                    runtime.spawn(runtime.outbox.run_forever(), name="outbox-relay")
            api = await self.definition.build(runtime)
            if db is not None:
                self._serve_outbox(api, runtime.outbox)
            if runtime.consumers:
                self._serve_consumers(api, runtime.consumers)
            api.metrics = metrics if settings.metrics else None
            api.callers = credentials.verifier
            runtime.spawn(self._watch_credentials(credentials), name="credential-watch")
            self._export_backlogs(runtime)
            if self.definition.verifier is not None and api.verifier is None:
                api.verifier = self.definition.verifier(runtime)
            if api.verifier is not None:  # keys rotated in are known before they sign anything
                runtime.spawn(api.verifier.refresh_forever(), name="jwks-refresh")
            await transport_nats.serve(nc, api, self.instance_id)  # drained with the connection
            app = self._app(api)
            tls = None
            if self.definition.public and settings.tls_cert_file and settings.tls_key_file:
                tls = (settings.tls_cert_file, settings.tls_key_file)
            self._server = HttpServer(
                app,
                host=settings.host,
                port=settings.port,
                drain_timeout_s=settings.drain_timeout_s,
                tls=tls,
                reuse_port=settings.reuse_port,
            )
            port = await self._server.start()
            self.instance = Instance(
                service=name,
                instance_id=self.instance_id,
                address=settings.advertise_host or settings.host,
                port=port,
                pid=os.getpid(),
                zone=settings.zone,
                version=api.version,
                started_at=time.time(),
            )
            await registry.register(self.instance)
        except BaseException:
            await self._close()
            raise
        self._move(State.READY)
        _release_startup_memory()
        log.info("ready", service=name, port=port, seconds=round(time.monotonic() - started, 3))

    def _credentials(self) -> CredentialFiles:
        """This service's identity, from the files an issuer keeps renewed (docs/decisions/0020)."""
        settings = self.settings
        if settings.identity_renew:  # `meshop run`: no supervisor renews it, the local root does
            provision(settings.identity_directory, [self.definition.name], lifetime_s=settings.identity_lifetime_s)
        return CredentialFiles(settings.identity_directory, self.definition.name)

    async def _watch_credentials(self, credentials: CredentialFiles) -> None:
        """Switch to renewed credentials and trust bundles with no restart; renew our own if asked."""
        settings = self.settings
        while True:
            await asyncio.sleep(CREDENTIAL_CHECK_S)
            if settings.identity_renew and credentials.minter.needs_renewal(settings.identity_lifetime_s):
                provision(settings.identity_directory, [self.definition.name], lifetime_s=settings.identity_lifetime_s)
            credentials.reload_if_changed()

    @staticmethod
    def _export_backlogs(runtime: Runtime) -> None:
        """Outbox backlog and consumer lag as gauges, read at each scrape."""
        metrics = runtime.metrics
        relay, consumers = runtime.outbox, runtime.consumers
        if relay is not None:
            pending = metrics.gauge("meshop_outbox_pending_events", "Events written but not yet published")
            age = metrics.gauge("meshop_outbox_oldest_pending_age_seconds", "Age of the oldest unpublished event")
            published = metrics.gauge("meshop_outbox_published_events", "Events this process published since start")

            async def outbox() -> None:
                stats = await relay.stats()
                pending.set(stats.pending)
                age.set(stats.oldest_pending_age_s)
                published.set(relay.published)

            metrics.on_scrape(outbox)
        if consumers:
            lag = metrics.gauge(
                "meshop_consumer_pending_events", "Events not yet delivered to a consumer", ["consumer"]
            )
            unacked = metrics.gauge(
                "meshop_consumer_unacknowledged_events", "Events delivered and not yet acknowledged", ["consumer"]
            )
            applied = metrics.gauge("meshop_consumer_applied_events", "Events this process applied", ["consumer"])
            dead = metrics.gauge("meshop_consumer_dead_lettered_events", "Events sent to the DLQ", ["consumer"])

            async def lags() -> None:
                for consumer in consumers:
                    stats = await consumer.stats()
                    lag.labels(stats.name).set(stats.pending)
                    unacked.labels(stats.name).set(stats.unacknowledged)
                    applied.labels(stats.name).set(stats.applied)
                    dead.labels(stats.name).set(stats.dead_lettered)

            metrics.on_scrape(lags)

    def _serve_outbox(self, api: Api, relay: OutboxRelay | None) -> None:
        """`GET /admin/outbox` on every service with a database: a service that emits no
        events answers an empty outbox, so an operator (and the chaos harness) can ask
        any service the same question."""

        @api.implement(outbox_operation(self.definition.name))
        async def admin_outbox(_ctx: Any, _body: None) -> OutboxStats:
            return await relay.stats() if relay is not None else OutboxStats(pending=0, oldest_pending_age_s=0.0)

    def _serve_consumers(self, api: Api, consumers: list[Consumer]) -> None:
        by_name = {c.name: c for c in consumers}

        @api.implement(consumers_operation(self.definition.name))
        async def admin_consumers(_ctx: Any, _body: None) -> list[ConsumerStats]:
            return [await c.stats() for c in consumers]

        @api.implement(replay_operation(self.definition.name))
        async def admin_replay(ctx: RequestContext, _body: None) -> ReplayResult:
            consumer = by_name.get(ctx.path_params["name"])
            if consumer is None:
                raise NotFound(f"no consumer named {ctx.path_params['name']!r}; see GET /admin/consumers")
            return await consumer.replay()

    async def _nats_error(self, exc: Exception) -> None:
        log.warning("nats error", error=repr(exc))

    async def _nats_disconnected(self) -> None:
        if self.runtime is not None:
            await self.runtime.registry.disconnected()

    async def _nats_reconnected(self) -> None:
        if self.runtime is not None:
            await self.runtime.registry.reconnected()
            if self.runtime.revocations is not None:
                self.runtime.spawn(self.runtime.revocations.reconnected(), name="revocation-resync")

    async def _open_database(self) -> Database | None:
        if self.definition.migrations is None:
            return None
        from meshop.mesh.data.store import Database

        db = Database(
            self.settings.database_url_for(self.definition.name),
            name=self.definition.name,
            pool_size=self.settings.database_pool_size,
            sql_trace_dir=self.settings.sql_trace_dir,
        )
        self._closers.append(db.close)
        await db.ensure_exists()
        return db

    async def _initialize(self, db: Database, runtime: Runtime) -> None:
        assert self.definition.migrations is not None
        async with db.init_lock():
            await db.migrate(self.definition.migrations)
            if self.definition.initialize is not None:
                await self.definition.initialize(runtime)

    def _app(self, api: Api) -> ASGIApp:
        async def health(_request: Request) -> Response:
            return json_response({"status": "ok", "service": api.service, "instance": self.instance_id})

        async def ready(_request: Request) -> Response:
            if self.state is not State.READY:
                return problem_response(ServiceUnavailable(f"instance is {self.state.value}", retry_after_s=1.0))
            return json_response({"status": "ready", "service": api.service, "instance": self.instance_id})

        async def openapi(_request: Request) -> Response:
            return json_response(api.openapi())

        async def http_error(request: Request, exc: Exception) -> Response:
            assert isinstance(exc, HTTPException)
            error: ProblemError = NotFound()
            if exc.status_code == 405:
                error = MethodNotAllowed(headers={"allow": exc.headers["Allow"]} if exc.headers else None)
            return problem_response(error, instance=request.url.path)

        async def faults(request: Request) -> Response:
            if not from_loopback(request):
                return problem_response(Forbidden("faults are set from this machine only"))
            try:
                wanted = msgspec.json.decode(await request.body(), type=Faults)
            except msgspec.DecodeError as exc:
                return problem_response(Unprocessable(str(exc)))
            if not (0 <= wanted.error_rate <= 1 and wanted.latency_ms >= 0):
                return problem_response(Unprocessable("error_rate must be within [0, 1], latency_ms >= 0"))
            api.faults = wanted
            log.warning("chaos faults set", latency_ms=wanted.latency_ms, error_rate=wanted.error_rate)
            return json_response({"latency_ms": wanted.latency_ms, "error_rate": wanted.error_rate})

        token_file = self.settings.metrics_token_file
        access = MetricsAccess(
            token=scrape_token.load(token_file) if token_file else None, loopback=self.settings.metrics_loopback
        )

        async def metrics(request: Request) -> Response:
            # The scrape token, loopback clients or the admin role (mesh/security/scrape_token.py).
            if not self.settings.metrics:
                return problem_response(NotFound("metrics are off (MESHOP_METRICS=false)"))
            refusal = await access.refusal(request, api.verifier)
            if refusal is not None:
                return problem_response(refusal)
            assert self.runtime is not None
            body = await self.runtime.metrics.exposition()
            return Response(body, media_type=METRICS_CONTENT_TYPE)

        routes: list[BaseRoute] = [
            Route("/health", health, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/ready", ready, methods=["GET"]),
            *api.extra_routes,  # first, so a process may serve its own /openapi.json
            Route("/openapi.json", openapi, methods=["GET"]),
            *api.routes(),
        ]
        if self.settings.chaos:
            routes.insert(0, Route("/_meshop/faults", faults, methods=["PUT"]))
        app = serving(routes, exception_handlers={HTTPException: http_error})
        return api.front(app) if api.front is not None else app

    async def stop(self) -> None:
        """Fail readiness, deregister, drain in-flight requests, then close."""
        if self.state in (State.DRAINING, State.STOPPED):
            return
        if self.state is State.CREATED:
            self.state = State.STOPPED
            return
        self._move(State.DRAINING)
        if self.runtime is not None and self.instance is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.runtime.registry.deregister(self.instance), timeout=3.0)
            # Callers that picked us just before the deregistration reached them still
            # get served: keep listening a moment before closing the socket.
            await asyncio.sleep(0.2)
        await self._close()
        self._move(State.STOPPED)
        log.info("stopped", service=self.definition.name)

    async def _close(self) -> None:
        if self._server is not None:
            await self._server.stop()
        for close in reversed(self._closers):
            try:  # bounded: a broker that is gone must not keep the process alive
                await asyncio.wait_for(close(), timeout=CLOSE_TIMEOUT_S)
            except Exception as exc:
                log.warning("error while closing", error=repr(exc))
        self._closers.clear()

    async def run(self) -> None:
        """Start, serve until SIGINT or SIGTERM, then stop gracefully.

        A signal while still starting (NATS or the database not reachable yet: start waits
        for them) cancels the start, so a container stops within its grace period whatever
        state it is in, rather than being killed at the end of it.
        """
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        starting = asyncio.ensure_future(self.start())
        signalled = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({starting, signalled}, return_when=asyncio.FIRST_COMPLETED)
            if not starting.done():
                log.info("stopping before ready", service=self.definition.name)
                starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starting  # its error, if it failed, is raised here
            await signalled
        finally:
            starting.cancel()
            signalled.cancel()
            await self.stop()
