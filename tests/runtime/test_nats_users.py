"""The shop's NATS users: each allow-list holds what its process needs, and no wildcard beyond its own.

The lists are derived from the services' definitions (`calls`, `outbox`, `consumes`); the
last tests keep the definitions equal to what the code does, and within the contracts'
caller allow-lists.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from meshop.contracts import SERVICES, catalog, operations_of, orders, payments, users
from meshop.mesh.api.operation import Access
from meshop.mesh.errors import ConfigError
from meshop.mesh.events.outbox import event_stream
from meshop.mesh.security.nats_auth import NatsCredentials, NatsLogin
from meshop.mesh.telemetry.tracing import SPANS_SUBJECT
from meshop.runtime.nats_server import find_binary
from meshop.runtime.nats_users import CLI_USERS, USERS_DIR, credentials_file, ensure_users, permissions_of
from meshop.services import PROCESSES, definitions, load_definition

SRC = Path(__file__).parents[2] / "src" / "meshop"
DEFINITIONS = definitions()
EMITS = {name for name, d in DEFINITIONS.items() if d.outbox}
REVIEWS = load_definition("reviews.app:DEFINITION")  # the guide's example (examples/ is on pytest's path)


def matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: `*` is one token, a final `>` one or more."""
    p, s = pattern.split("."), subject.split(".")
    for i, token in enumerate(p):
        if token == ">":
            return len(s) > i
        if i >= len(s) or (token != "*" and token != s[i]):
            return False
    return len(p) == len(s)


def may_publish(user: str, subject: str) -> bool:
    return any(matches(p, subject) for p in permissions_of(user).publish)


def may_subscribe(user: str, subject: str) -> bool:
    return any(matches(p, subject) for p in permissions_of(user).subscribe)


def test_subject_matching_follows_nats() -> None:
    assert matches("a.*.c", "a.b.c")
    assert not matches("a.*", "a.b.c")
    assert matches("a.>", "a.b.c")
    assert not matches("a.>", "a")


def own_prefixes(service: str) -> list[str]:
    """What a service's wildcards may range over: its own namespaces, streams and called operations."""
    streams = ["KV_meshop_registry", "KV_meshop_revoked"]
    if service in EMITS:
        streams.append(event_stream(service))
    streams += [event_stream(events[0].source) for events in DEFINITIONS[service].consumes.values()]
    prefixes = [
        f"meshop.rpc.{service}.",
        f"_INBOX_{service}.",
        f"$KV.meshop_registry.{service}.",
        f"meshop.events.{service}.",
        f"meshop.dlq.{service}.",
    ]
    prefixes += [f"{api}.{stream}." for stream in streams for api in _JS_PREFIXES]
    prefixes += [f"$JS.FC.{stream}." for stream in streams] + [f"$JS.ACK.{stream}." for stream in streams]
    calls = [*DEFINITIONS[service].calls, users.JWKS]
    if service == "gateway":
        calls += [op for s in SERVICES for op in operations_of(s) if op.access is not Access.INTERNAL]
    prefixes += [f"{op.subject}." for op in calls]
    if service == "users":
        prefixes.append("$KV.meshop_revoked.")
    return prefixes


_JS_PREFIXES = [
    "$JS.API.CONSUMER.CREATE",
    "$JS.API.CONSUMER.INFO",
    "$JS.API.CONSUMER.DELETE",
    "$JS.API.CONSUMER.MSG.NEXT",
    "$JS.API.DIRECT.GET",
]


@pytest.mark.parametrize("service", list(PROCESSES))
def test_a_services_wildcards_range_only_over_its_own_subjects(service: str) -> None:
    perms = permissions_of(service)
    prefixes = own_prefixes(service)
    for subject in (*perms.publish, *perms.subscribe):
        if "*" in subject or ">" in subject:
            head = subject[: min(i for i in (subject.find("*"), subject.find(">")) if i >= 0)]
            assert any(head.startswith(p) for p in prefixes), (service, subject)


@pytest.mark.parametrize("user", [*PROCESSES, *CLI_USERS])
def test_nobody_may_use_everything(user: str) -> None:
    perms = permissions_of(user)
    for anything in (">", "meshop.>", "$JS.API.>", "$KV.>", "_INBOX.>", "meshop.rpc.>"):
        assert anything not in perms.publish + perms.subscribe
    assert not may_subscribe(user, "_INBOX.abc.1")  # the default inbox is nobody's
    assert not may_publish(user, "$JS.API.STREAM.DELETE.MESHOP_EVENTS_ORDERS")
    assert not may_publish(user, "$JS.API.STREAM.PURGE.KV_meshop_registry")
    for service in SERVICES:  # another's event stream: only its producer raises its replicas
        assert may_publish(user, f"$JS.API.STREAM.UPDATE.MESHOP_EVENTS_{service.upper()}") == (
            user == service and service in EMITS
        )


@pytest.mark.parametrize("service", list(PROCESSES))
def test_a_service_may_raise_the_replicas_of_the_streams_it_opens_and_owns(service: str) -> None:
    """MESHOP_NATS_REPLICAS: the shared buckets and dead letters are every opener's (mesh.jetstream)."""
    assert may_publish(service, "$JS.API.STREAM.UPDATE.KV_meshop_registry")
    assert may_publish(service, "$JS.API.STREAM.UPDATE.KV_meshop_revoked")
    consumes = bool(DEFINITIONS[service].consumes)
    assert may_publish(service, "$JS.API.STREAM.INFO.MESHOP_DLQ") == consumes
    assert may_publish(service, "$JS.API.STREAM.UPDATE.MESHOP_DLQ") == consumes


@pytest.mark.parametrize("service", list(PROCESSES))
def test_a_service_serves_its_operations_and_reads_only_its_own_replies(service: str) -> None:
    assert permissions_of(service).responses
    assert may_subscribe(service, f"meshop.rpc.{service}.anything.instance-1")
    assert may_subscribe(service, f"_INBOX_{service}.nuid.1")
    for other in PROCESSES:
        if other != service:
            assert not may_subscribe(service, f"_INBOX_{other}.nuid.1")
            assert not may_subscribe(service, f"meshop.rpc.{other}.anything")


@pytest.mark.parametrize("service", list(PROCESSES))
def test_a_service_writes_only_its_own_registry_keys_and_reads_them_all(service: str) -> None:
    assert may_publish(service, f"$KV.meshop_registry.{service}.abc-1")
    for other in PROCESSES:
        if other != service:
            assert not may_publish(service, f"$KV.meshop_registry.{other}.abc-1")
    assert may_publish(service, "$JS.API.CONSUMER.CREATE.KV_meshop_registry")  # a watch
    assert may_publish(service, "$JS.API.DIRECT.GET.KV_meshop_registry.$KV.meshop_registry.payments.x")


def test_orders_calls_exactly_its_saga_steps() -> None:
    for op in DEFINITIONS["orders"].calls:
        assert may_publish("orders", op.subject)
        assert may_publish("orders", f"{op.subject}.instance-1")
    assert not may_publish("orders", "meshop.rpc.payments.refund")
    assert not may_publish("orders", "meshop.rpc.users.login")


def test_only_orders_may_capture_a_payment() -> None:
    allowed = [user for user in (*PROCESSES, *CLI_USERS) if may_publish(user, payments.CAPTURE.subject)]
    assert allowed == ["orders"]


def test_the_gateway_requests_only_routed_operations() -> None:
    for service in SERVICES:
        for op in operations_of(service):
            assert may_publish("gateway", op.subject) == (op.access is not Access.INTERNAL), op.qualified


def test_only_services_publish_spans_and_only_the_console_reads_them() -> None:
    assert [u for u in (*PROCESSES, *CLI_USERS) if may_publish(u, SPANS_SUBJECT)] == list(PROCESSES)
    assert [u for u in (*PROCESSES, *CLI_USERS) if may_subscribe(u, SPANS_SUBJECT)] == ["console"]


def test_only_users_writes_the_revocation_bucket() -> None:
    writers = [u for u in (*PROCESSES, *CLI_USERS) if may_publish(u, "$KV.meshop_revoked.some-jti")]
    assert writers == ["users"]
    assert all(may_publish(s, "$JS.API.CONSUMER.CREATE.KV_meshop_revoked") for s in PROCESSES)


def test_events_are_published_by_their_producer_and_consumed_through_the_durable_only() -> None:
    for service in EMITS:
        publishers = [u for u in (*PROCESSES, *CLI_USERS) if may_publish(u, f"meshop.events.{service}.Happened")]
        assert publishers == [service]
    stream = event_stream("orders")
    assert may_publish("users", f"$JS.API.CONSUMER.MSG.NEXT.{stream}.users-order-stats")
    assert may_publish("users", f"$JS.ACK.{stream}.users-order-stats.1.2.3.4.5")
    assert may_publish("users", "meshop.dlq.users.order-stats")
    assert may_publish("users", f"$JS.API.CONSUMER.CREATE.{stream}.shZE7JlOCreDYRcBJtggmY")  # a replay's
    assert not may_publish("users", "meshop.dlq.orders.x")
    assert not may_publish("users", f"$JS.ACK.{event_stream('payments')}.x.1")
    assert not may_publish("catalog", f"$JS.API.CONSUMER.MSG.NEXT.{stream}.users-order-stats")


def test_cli_users_read_only_what_their_command_reads() -> None:
    assert may_publish("status", "$JS.API.STREAM.INFO.KV_meshop_registry")
    assert not may_publish("status", "$JS.API.STREAM.CREATE.KV_meshop_registry")
    assert not may_publish("status", f"$JS.API.STREAM.INFO.{event_stream('orders')}")
    assert may_publish("events", f"$JS.API.STREAM.MSG.GET.{event_stream('orders')}")
    assert may_publish("events", "$JS.API.STREAM.MSG.GET.MESHOP_DLQ")
    assert may_subscribe("events", "meshop.events.orders.OrderPlaced")
    assert not may_publish("events", "meshop.events.orders.OrderPlaced")
    for user in CLI_USERS:
        assert not permissions_of(user).responses
        assert not any(may_publish(user, op.subject) for s in SERVICES for op in operations_of(s))


# The definitions declare what a service calls and consumes; these keep them equal to what the code does.


def _called_in(path: Path) -> set[str]:
    return {f"{m[0]}.{m[1]}" for m in re.findall(r"\.call\(\s*(\w+)\.([A-Z_]+)", path.read_text())}


def test_a_definition_declares_every_operation_its_service_calls() -> None:
    qualified = {f"{op.service}.{op.name}": op for s in SERVICES for op in operations_of(s)}
    by_constant = {
        f"{module}.{name}": op
        for module in SERVICES
        for name, op in vars(__import__(f"meshop.contracts.{module}", fromlist=["x"])).items()
        if op in qualified.values()
    }
    for service in ("users", "catalog", "inventory", "payments", "shipping", "orders"):
        called = set().union(*(_called_in(p) for p in (SRC / "services" / service).glob("*.py")))
        if service in ("orders", "inventory"):
            assert called, f"the search for {service}'s calls finds none: does it still match the code?"
        assert {by_constant[c] for c in called} <= set(DEFINITIONS[service].calls), service


def test_a_consumer_reads_the_events_of_one_source() -> None:
    for name, definition in {**DEFINITIONS, "reviews": REVIEWS}.items():
        for consumer, events in definition.consumes.items():
            assert len({kind.source for kind in events}) == 1, (name, consumer)
    assert DEFINITIONS["users"].consumes.keys() == {"order-stats"}


def test_users_are_created_once_private_and_the_server_accepts_their_config(tmp_path: Path) -> None:
    first = ensure_users(tmp_path)
    assert ensure_users(tmp_path) == first  # kept: a server started earlier still admits them
    assert set(first) == {*PROCESSES, *CLI_USERS}
    assert (tmp_path / USERS_DIR).stat().st_mode & 0o777 == 0o700
    for user in first:
        assert credentials_file(tmp_path, user).stat().st_mode & 0o777 == 0o600
        assert NatsCredentials.read(credentials_file(tmp_path, user)).inbox_prefix == f"_INBOX_{user}"
    conf = tmp_path / USERS_DIR / "server.conf"
    assert conf.stat().st_mode & 0o777 == 0o600
    checked = subprocess.run([str(find_binary()), "-c", str(conf), "-t"], capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stderr


def test_a_login_without_credentials_is_anonymous_and_one_with_them_uses_its_inbox(tmp_path: Path) -> None:
    assert NatsLogin.load(None).options() == {}
    ensure_users(tmp_path)
    options = NatsLogin.load(credentials_file(tmp_path, "orders")).options()
    assert (options["user"], options["inbox_prefix"]) == ("orders", "_INBOX_orders")
    assert "password" not in repr(NatsLogin.load(credentials_file(tmp_path, "orders")).credentials).replace(
        "password=***", ""
    )


def test_a_malformed_credentials_file_fails_naming_it(tmp_path: Path) -> None:
    bad = tmp_path / "orders.json"
    bad.write_text('{"user": "orders"}')
    with pytest.raises(ConfigError, match=str(bad)):
        NatsLogin.load(bad)


def test_nats_lets_a_service_request_only_operations_whose_contract_lists_it_as_a_caller() -> None:
    """The NATS permissions never open what the callee's allow-list (its contract) refuses."""
    for service, definition in DEFINITIONS.items():
        for op in definition.calls:
            if op.access is Access.INTERNAL:
                assert service in op.callers, (
                    f"{service} may request {op.qualified} on NATS but is not among its callers"
                )


# A service built elsewhere (`meshop up --with`): the same rules, from its definition.


def test_a_service_built_elsewhere_gets_a_user_by_its_definition() -> None:
    extra = [REVIEWS]
    perms = permissions_of("reviews", extra=extra)
    allowed = [p for p in perms.publish if p.startswith("meshop.rpc.")]
    assert allowed == [
        catalog.GET.subject,
        f"{catalog.GET.subject}.*",
        users.JWKS.subject,
        f"{users.JWKS.subject}.*",
    ]
    stream = event_stream("orders")
    assert any(matches(p, f"$JS.API.CONSUMER.MSG.NEXT.{stream}.reviews-purchases") for p in perms.publish)
    assert any(matches(p, "meshop.events.reviews.ReviewPosted") for p in perms.publish)
    assert not any(matches(p, f"$JS.ACK.{stream}.users-order-stats.1.2.3.4.5") for p in perms.publish)
    assert perms.subscribe == ("meshop.rpc.reviews.>", "_INBOX_reviews.>")
    assert not any(matches(p, catalog.LOOKUP.subject) for p in perms.publish)  # internal: not its caller


def test_the_gateway_routes_a_service_built_elsewhere_only_when_it_runs() -> None:
    post = "meshop.rpc.reviews.post"
    assert any(matches(p, post) for p in permissions_of("gateway", extra=[REVIEWS]).publish)
    assert not any(matches(p, post) for p in permissions_of("gateway").publish)
    assert any(
        matches(p, "$JS.API.STREAM.MSG.GET.MESHOP_EVENTS_REVIEWS")
        for p in permissions_of("events", extra=[REVIEWS]).publish
    )
    with pytest.raises(ValueError, match="no NATS user 'reviews'"):
        permissions_of("reviews")


def test_a_service_built_elsewhere_may_not_take_a_shop_process_name() -> None:
    import dataclasses

    with pytest.raises(ValueError, match="'orders' runs already"):
        definitions([dataclasses.replace(REVIEWS, name="orders")])


def test_the_users_of_services_built_elsewhere_are_created_and_the_server_accepts_them(tmp_path: Path) -> None:
    found = ensure_users(tmp_path, extra=[REVIEWS])
    assert set(found) == {*PROCESSES, "reviews", *CLI_USERS}
    conf = tmp_path / USERS_DIR / "server.conf"
    assert '"user": "reviews"' in conf.read_text()
    checked = subprocess.run([str(find_binary()), "-c", str(conf), "-t"], capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stderr
    assert orders.ORDER_PLACED.source == "orders"
