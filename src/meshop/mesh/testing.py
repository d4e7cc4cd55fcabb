"""Test tools for services built on the mesh, and for the mesh's own tests.

The mesh takes its clock and its sleep as arguments wherever time is behaviour (breakers,
retry budgets, rate limits, registry views, sagas, tokens): pass a `FakeClock` and move time
by hand instead of sleeping. Where a test waits for another process or a broker, it waits
on the condition with `eventually`, never for a fixed time.

    clock = FakeClock()
    breaker = CircuitBreaker(policy, clock=clock)
    clock.advance(5.0)
    await eventually(lambda: view.instances("catalog") == [], within_s=5)

`TestMesh` runs services in the test's own process: each on its migrated database, found
through an in-memory registry, called through an in-memory transport (`MemoryExchange`)
by the same client, chain and endpoints as in production, and as a given caller, whose
service identity is signed by the test mesh's own issuer:

    async with TestMesh(tmp_path) as mesh:
        inventory = await mesh.start(inventory_app.DEFINITION)
        stock = await mesh.call(inventory_contract.GET_STOCK, path_params={"sku": "X"})
        reserved = await mesh.call(RESERVE, body, idempotency_key="k", caller="orders")

No NATS: what a service emits stays in its outbox table, and its consumers do not run;
a test hands one an event instead, decoded as the consumer decodes it and applied in a
transaction of the service's database, with the handler the service registered:

    event = await reviews.deliver("purchases", ORDER_CONFIRMED, OrderConfirmed(...))

A test of what goes over the wire (status codes, headers, problem bodies, concurrent
requests) serves a started service's API over real HTTP as well, and calls an INTERNAL
operation with the identity a given caller would send:

    url = await inventory.serve_http()
    headers = mesh.identity_headers("orders", "inventory")

Integration and end-to-end tests keep real NATS, SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import sqlite3
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar
from urllib.parse import unquote

import msgspec
from starlette.responses import Response

from meshop.mesh.api.operation import Operation
from meshop.mesh.api.routing import Api, Incoming, problem_response, serving
from meshop.mesh.api.routing import Reply as EndpointReply
from meshop.mesh.client.client import ServiceClient
from meshop.mesh.data.store import Database
from meshop.mesh.errors import NotFound, TransportError
from meshop.mesh.events.consumer import Handler, Reset
from meshop.mesh.events.envelope import Event, EventType, Reader, event_id
from meshop.mesh.headers import IDENTITY_HEADER
from meshop.mesh.registry.base import Instance
from meshop.mesh.registry.static import StaticRegistry
from meshop.mesh.security.identity import CallerVerifier, Issuer, TokenMinter, TrustBundle
from meshop.mesh.security.tokens import TokenVerifier
from meshop.mesh.service.lifecycle import Runtime, ServiceDefinition
from meshop.mesh.service.settings import Settings
from meshop.mesh.transport.exchange import Exchange, Reply, Request
from meshop.mesh.transport.server import HttpServer

T = TypeVar("T")
S = TypeVar("S", bound=msgspec.Struct)
Resp = TypeVar("Resp")

__all__ = [
    "FakeClock",
    "MemoryExchange",
    "StaticRegistry",
    "Subscription",
    "TestMesh",
    "TestService",
    "eventually",
]


class FakeClock:
    """A monotonic clock that moves only when told: `clock()` reads it, like `time.monotonic`.

    `sleep` is an injectable `asyncio.sleep` that lets the time pass at once.
    """

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a clock does not go back")
        self.now += seconds

    async def sleep(self, seconds: float) -> None:
        self.advance(max(0.0, seconds))


async def eventually(
    check: Callable[[], T | Awaitable[T]],
    *,
    within_s: float = 10.0,
    poll_s: float = 0.02,
    what: str | None = None,
) -> T:
    """The first truthy value of `check()` (a plain or an async callable), asked every `poll_s`.

    Raises AssertionError, naming `what` (default: the check's source), if none came within
    `within_s` of real time.
    """
    deadline = time.monotonic() + within_s
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what or _describe(check)} was not true within {within_s:g} s (last: {value!r})")
        await asyncio.sleep(poll_s)


def _describe(check: Callable[..., object]) -> str:
    try:
        return inspect.getsource(check).strip()
    except (OSError, TypeError):
        return repr(check)


class MemoryExchange(Exchange):
    """An in-memory transport (`transport.exchange.Exchange`): a try goes straight to the
    endpoint of the `Api` served for its instance, as the NATS transport hands it over.

    Everything the endpoint does runs: validation, the caller's identity, the user's token,
    errors as problem+json. A try to an instance not served here fails as a request that
    never left (`TransportError(sent=False)`); one slower than its timeout, as a timeout.
    """

    def __init__(self) -> None:
        self._apis: dict[str, Api] = {}

    def serve(self, instance: Instance, api: Api) -> None:
        self._apis[instance.instance_id] = api

    def forget(self, instance: Instance) -> None:
        self._apis.pop(instance.instance_id, None)

    async def exchange(self, instance: Instance, request: Request, headers: dict[str, str], timeout_s: float) -> Reply:
        api = self._apis.get(instance.instance_id)
        if api is None:
            raise TransportError(f"{instance.service} {instance.instance_id} is not served in this process", sent=False)
        target, _, query = request.path.partition("?")
        path = unquote(target)
        lowered = {k.lower(): v for k, v in headers.items()}
        for op, endpoint in api.endpoints().items():
            params = op.match(path) if op.method == request.method else None
            if params is not None:
                incoming = Incoming(lowered, path, params, method=op.method, query=query, body=request.body or b"")
                try:
                    return _reply(await asyncio.wait_for(endpoint(incoming), timeout_s))
                except TimeoutError:
                    raise TransportError(
                        f"{instance.service} did not answer within {timeout_s:.3f}s", sent=True
                    ) from None
        return _reply(problem_response(NotFound(f"no operation of {instance.service} serves {request.method} {path}")))


def _reply(response: EndpointReply | Response) -> Reply:
    """An endpoint's answer as a transport carries it back."""
    if isinstance(response, EndpointReply):
        headers = {"content-type": "application/json"} if response.body else {}
        return Reply(response.status_code, headers, bytes(response.body))
    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in response.raw_headers}
    return Reply(response.status_code, headers, bytes(response.body))


@dataclass(frozen=True)
class Subscription:
    """A consumer a service asked for (`runtime.consume`) in a test mesh, which does not run it."""

    name: str
    events: list[EventType[Any]]
    handler: Handler
    reset: Reset | None


@dataclass
class _InProcessRuntime(Runtime):
    """A runtime with no NATS: `consume` records the consumer instead of starting it."""

    subscriptions: dict[str, Subscription] = field(default_factory=dict)

    def consume(  # type: ignore[override]  # no Consumer: nothing to run it on
        self,
        name: str,
        *,
        handler: Handler,
        events: Sequence[EventType[Any]] | None = None,
        reset: Reset | None = None,
    ) -> None:
        if name in self.subscriptions:
            raise ValueError(f"{self.service} has a consumer named {name!r} already")
        events = self.declared_events(name, events)
        Reader(events)  # the same checks of its types a consumer makes
        if len({kind.source for kind in events}) != 1:
            raise ValueError(f"consumer {name} must read the events of one source")
        self.subscriptions[name] = Subscription(name, list(events), handler, reset)


class _MigratedTemplates:
    """SQLite databases migrated once per process, one per migrations folder, copied for each
    test: `Database.migrate` runs Alembic in a child process (~1 s), a copy takes milliseconds."""

    def __init__(self) -> None:
        self._templates: dict[Path, Path] = {}
        self._lock = asyncio.Lock()
        self._directory: tempfile.TemporaryDirectory[str] | None = None

    async def copy(self, migrations: Path, target: Path) -> None:
        async with self._lock:
            template = self._templates.get(migrations)
            if template is None:
                if self._directory is None:
                    self._directory = tempfile.TemporaryDirectory(prefix="meshop-testing-")
                template = Path(self._directory.name) / f"{len(self._templates)}.db"
                db = Database(f"sqlite+aiosqlite:///{template}", name=template.stem)
                try:
                    await db.ensure_exists()
                    await db.migrate(migrations)
                finally:
                    await db.close()
                self._templates[migrations] = template
        source, copy = sqlite3.connect(template), sqlite3.connect(target)
        try:
            source.backup(copy)  # consistent whatever the template's WAL holds
        finally:
            source.close()
            copy.close()


_MIGRATED = _MigratedTemplates()


class TestService:
    """One service started in a `TestMesh`: its API, runtime and database."""

    __test__ = False  # not a pytest test class

    def __init__(self, mesh: TestMesh, instance: Instance, runtime: _InProcessRuntime, api: Api) -> None:
        self.mesh = mesh
        self.instance = instance
        self.runtime = runtime
        self.api = api
        self._server: HttpServer | None = None
        self._url: str | None = None

    @property
    def database(self) -> Database:
        return self.runtime.database

    @property
    def subscriptions(self) -> dict[str, Subscription]:
        """The consumers the service registered, by name."""
        return self.runtime.subscriptions

    async def serve_http(self) -> str:
        """Serve the service's API over real HTTP too, on 127.0.0.1 and a free port, until the
        mesh closes; returns its base URL, `http://127.0.0.1:PORT` (the same one if called again).

        The routes are the API's, as its process serves them (without the process's own
        `/health`, `/ready` and `/metrics`), with the verifiers it has in the mesh: a user's
        token for the mesh's `verifier`, `mesh.identity_headers(caller, service)` for an
        INTERNAL operation.
        """
        if self._url is None:
            app = serving([*self.api.extra_routes, *self.api.routes()])
            server = HttpServer(self.api.front(app) if self.api.front is not None else app, host="127.0.0.1", port=0)
            port = await server.start()
            self._server, self._url = server, f"http://127.0.0.1:{port}"
        return self._url

    async def _close(self) -> None:
        """Stop serving HTTP, if it did, its tasks, and close its database."""
        if self._server is not None:
            await self._server.stop()
            self._server = self._url = None
        await self.runtime.cancel_tasks()
        if self.runtime.db is not None:
            await self.runtime.db.close()

    async def deliver(self, consumer: str, kind: EventType[S], data: S) -> Event[S]:
        """Apply one `kind` event to consumer `consumer` as it would arrive from its stream.

        The envelope goes through JSON and the consumer's decoding (an event type it does
        not read raises `UnreadableEvent`, which it would dead-letter), then its handler
        runs in a transaction. Not the inbox: delivering an event twice applies it twice.
        """
        subscription = self.subscriptions[consumer]
        event = Event(
            id=event_id(),
            type=kind.name,
            schema_version=kind.schema_version,
            occurred_at=time.time(),
            data=data,
        )
        decoded = Reader(subscription.events).read(msgspec.json.encode(event))
        async with self.database.begin() as conn:
            await subscription.handler(conn, decoded)
        return decoded

    async def reset(self, consumer: str) -> None:
        """Run consumer `consumer`'s reset, as a replay of its stream does first."""
        reset = self.subscriptions[consumer].reset
        if reset is None:
            raise ValueError(f"{self.runtime.service}'s consumer {consumer!r} has no reset")
        async with self.database.begin() as conn:
            await reset(conn)


class TestMesh:
    """Services in this process, an in-memory registry and transport, and callers with identities.

    `directory` holds the services' SQLite databases (default) unless `database_url`
    names a server: `database_url.format(service=...)` per service, e.g. a PostgreSQL URL
    with a unique database name per test. `verifier` checks users' tokens for every service
    started (default: each definition's own, if it needs no other service, else none).
    """

    __test__ = False

    def __init__(
        self,
        directory: Path,
        *,
        database_url: str | None = None,
        settings: Settings | None = None,
        verifier: TokenVerifier | None = None,
    ) -> None:
        self.directory = directory
        self.registry = StaticRegistry()
        self.exchange = MemoryExchange()
        self.settings = settings or Settings()
        self._database_url = database_url
        self._verifier = verifier
        self._issuer = Issuer.generate()
        self._bundle = TrustBundle({self._issuer.kid: self._issuer.key.public_key()})
        self._clients: dict[str | None, ServiceClient] = {}
        self._minters: dict[str, TokenMinter] = {}
        self._services: list[TestService] = []
        self._ids = itertools.count(1)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def client(self, *, caller: str | None = None) -> ServiceClient:
        """A client that calls through this mesh; as `caller` (a service name), it carries
        that service's identity, as a service's own client does."""
        found = self._clients.get(caller)
        if found is None:
            found = self._clients[caller] = ServiceClient(self.registry, exchange=self.exchange)
            if caller is not None:
                found.identity = self._minter(caller)
        return found

    def identity_headers(self, caller: str, callee: str) -> dict[str, str]:
        """The header `caller` (a service) sends with a request to `callee`: its identity, signed
        by this mesh's issuer as `client(caller=...)` signs it, for raw HTTP requests to a
        service's INTERNAL operations (`TestService.serve_http`)."""
        return {IDENTITY_HEADER: self._minter(caller).header(callee)}

    def _minter(self, caller: str) -> TokenMinter:
        found = self._minters.get(caller)
        if found is None:
            found = self._minters[caller] = TokenMinter(self._issuer.issue(caller))
        return found

    async def start(
        self,
        definition: ServiceDefinition,
        *,
        seed: Callable[[Database], Awaitable[None]] | None = None,
        initialize: bool = True,
        client: ServiceClient | None = None,
    ) -> TestService:
        """Migrate `definition`'s database, run its `initialize` (unless told not to), build
        its API and serve it here; `seed` runs after migrating, before `initialize`.

        The service calls others with `client`: by default the mesh's, with the service's
        identity; a test passes a fake to stand in for the services it calls.
        """
        name = definition.name
        db: Database | None = None
        if definition.migrations is not None:
            url = (
                self._database_url.format(service=name)
                if self._database_url
                else f"sqlite+aiosqlite:///{self.directory / f'{name}.db'}"
            )
            if self._database_url:
                db = Database(url, name=name)
                await db.ensure_exists()
                await db.migrate(definition.migrations)
            else:  # a copy of a database migrated once per process: migrating takes a child process
                await _MIGRATED.copy(definition.migrations, self.directory / f"{name}.db")
                db = Database(url, name=name)
            if seed is not None:
                await seed(db)
        instance = Instance(service=name, instance_id=f"{name}-{next(self._ids)}", address="memory", port=0, pid=0)
        runtime = _InProcessRuntime(
            settings=self.settings,
            service=name,
            instance_id=instance.instance_id,
            nc=None,  # type: ignore[arg-type]  # no NATS in process: nothing here uses it
            registry=self.registry,  # type: ignore[arg-type]
            client=client or self.client(caller=name),
            db=db,
            # the one way adapters are injected: a test passes `replace(DEFINITION, adapters=...)`
            adapters=definition.adapters(self.settings) if definition.adapters is not None else None,
            declared=definition.consumes,
        )
        if initialize and definition.initialize is not None:
            await definition.initialize(runtime)
        api = await definition.build(runtime)
        api.verifier = api.verifier or self._verifier
        api.callers = CallerVerifier(name, self._bundle)
        self.exchange.serve(instance, api)
        await self.registry.register(instance)
        service = TestService(self, instance, runtime, api)
        self._services.append(service)
        return service

    async def call(
        self,
        op: Operation[Any, Resp],
        body: Any = None,
        *,
        caller: str | None = None,
        token: str | None = None,
        path_params: Mapping[str, Any] | None = None,
        query: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
    ) -> Resp:
        """Call `op` as `caller` (a service, with its identity; None: an anonymous caller)
        and, with `token`, on behalf of that user; its errors are raised as the client's."""
        return await self.client(caller=caller).call(
            op, body, path_params=path_params, query=query, idempotency_key=idempotency_key, token=token
        )

    async def close(self) -> None:
        for service in reversed(self._services):
            await self.registry.deregister(service.instance)
            self.exchange.forget(service.instance)
            await service._close()
        self._services.clear()
        for client in self._clients.values():
            await client.close()
        self._clients.clear()
