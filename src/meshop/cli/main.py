"""The `meshop` command: up, run, status, explain, events, chaos, analyze."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer

from meshop.deploy.cli import deploy
from meshop.lab.cli import lab
from meshop.mesh.errors import ConfigError

if TYPE_CHECKING:
    from meshop.analysis.plan import Plan

T = TypeVar("T")

app = typer.Typer(help="meshop: the mesh and the shop built on it.", no_args_is_help=True, add_completion=False)


def _print_version(value: bool) -> None:
    if value:
        from meshop import __version__

        typer.echo(f"meshop {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """meshop: the mesh and the shop built on it."""


@app.command()
def run(
    service: Annotated[
        str,
        typer.Argument(
            help="users, catalog, inventory, orders, payments, shipping, console or gateway; "
            "or module:ATTRIBUTE, the definition of a service built on the mesh elsewhere (reviews.app:DEFINITION)"
        ),
    ],
    issue_identity: Annotated[
        bool,
        typer.Option(
            help="Issue and renew this process's service credential from the root key in the identity "
            "directory (development; in production an issuer writes the credential files)."
        ),
    ] = False,
) -> None:
    """Run one process of SERVICE (the production entrypoint)."""
    import os
    import sys

    _refuse_stale_build()
    if issue_identity:
        os.environ["MESHOP_IDENTITY_RENEW"] = "1"
    # The service runs in the lean worker (docs/decisions/0013), not beside the CLI's typer
    # and rich (20 MB of RSS measured in the image): exec'd, so it keeps this process's PID
    # (a container's PID 1 is the service, and the signals reach it).
    os.execv(sys.executable, [sys.executable, "-m", "meshop.runtime.worker", service])  # noqa: S606


@app.command()
def migrate(
    service: Annotated[list[str] | None, typer.Argument(help="The services whose database to migrate.")] = None,
    every: Annotated[bool, typer.Option("--all", help="Every service that has a database.")] = False,
) -> None:
    """Migrate each SERVICE's configured database to its newest migration, then exit (0: all up to date).

    Holds the lock a starting service takes, so concurrent runs never migrate at once (a
    Kubernetes Job runs `meshop migrate --all` once per rollout). The databases are the
    processes' own settings: MESHOP_DATABASE_URL[_FILE], MESHOP_<SERVICE>_DATABASE_URL[_FILE].
    """
    from meshop.runtime.migrations import Migrated, with_database
    from meshop.runtime.migrations import migrate as migrate_one
    from meshop.services import PROCESSES

    if every == bool(service):
        _fail("name the services to migrate, or --all (not both)")
    migrated = with_database()
    names = migrated if every else list(dict.fromkeys(service or []))
    for name in names:
        if name not in migrated:
            what = "has no database" if name in PROCESSES else "is no service"
            _fail(f"{name} {what}; the services with a database: {', '.join(migrated)}")

    async def main() -> None:
        for name in names:
            try:
                done: Migrated = await migrate_one(name)
            except ConfigError:
                raise
            except Exception as exc:  # one line for a Job's log, not a traceback
                raise ConfigError(f"{name}: {type(exc).__name__}: {exc}") from None
            typer.echo(done.line())

    try:
        asyncio.run(main())
    except ConfigError as exc:
        typer.echo(f"meshop: {exc}", err=True)
        raise typer.Exit(1) from None


@app.command()
def up(
    port: Annotated[int, typer.Option(help="The gateway's port.")] = 8080,
    replicas: Annotated[list[str] | None, typer.Option("--replicas", help="SERVICE=N, repeatable.")] = None,
    data_dir: Annotated[Path, typer.Option(help="Where state lives (databases, NATS store).")] = Path(".meshop"),
    with_: Annotated[
        list[str] | None,
        typer.Option(
            "--with",
            help="Also run a service built on the mesh elsewhere, named by its definition as module:ATTRIBUTE "
            "(importable: reviews.app:DEFINITION with examples/ on PYTHONPATH); repeatable.",
        ),
    ] = None,
) -> None:
    """Run the whole shop on this machine: NATS, six services and the gateway."""
    import os
    import sys

    from meshop.cli.invocation import command_name
    from meshop.runtime.supervisor import Supervisor, parse_replicas
    from meshop.runtime.worker import use_uvloop
    from meshop.services import definitions, load_definition

    _refuse_stale_build()
    try:
        extra = {spec: load_definition(spec) for spec in with_ or []}
        known = definitions(list(extra.values()))  # refuses a name the shop uses, or one given twice
        counts = parse_replicas(replicas or [], known=known)
    except ValueError as exc:
        typer.echo(f"meshop: {exc}", err=True)
        raise typer.Exit(2) from None
    if not _port_free(port):
        _fail(f"port {port} is in use (another program, or another shop, listens on it): choose one with --port")
    use_uvloop()
    cli = command_name(sys.argv[0], executable=sys.executable, cwd=Path(os.getcwd()))
    supervisor = Supervisor(data_dir=data_dir, gateway_port=port, replicas=counts, cli=cli, extra=extra)
    code = asyncio.run(supervisor.run())
    raise typer.Exit(code)


@app.command()
def status(
    data_dir: Annotated[Path, typer.Option(help="The data dir of the shop to inspect.")] = Path(".meshop"),
    url: Annotated[str | None, typer.Option(help="The shop's gateway URL instead of its data dir.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List the registered instances of a running shop, with their health."""
    from meshop.runtime.inspect import instances_via_gateway, instances_via_nats

    try:
        rows = asyncio.run(instances_via_gateway(url) if url else instances_via_nats(data_dir))
    except (ConfigError, OSError) as exc:
        typer.echo(f"meshop: {exc}", err=True)
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("service", "instance", "pid", "address", "zone", "health")
    for row in rows:
        table.add_row(row["service"], row["instance_id"], str(row["pid"]), row["address"], row["zone"], row["health"])
    Console().print(table)


@app.command()
def explain(
    service: Annotated[str, typer.Argument(help="The service, e.g. inventory.")],
    operation: Annotated[str, typer.Argument(help="The operation, e.g. reserve.")],
    policies: Annotated[Path | None, typer.Option(help="A policies TOML file (default: MESHOP_POLICIES_FILE).")] = None,
) -> None:
    """Print the resilience chain a call to SERVICE OPERATION goes through, with its policy."""
    from meshop.contracts import SERVICES, operations_of
    from meshop.mesh.resilience.config import Policies
    from meshop.mesh.resilience.explain import explain as describe
    from meshop.mesh.service.settings import setting

    if service not in SERVICES:
        typer.echo(f"meshop: unknown service {service!r}; known: {', '.join(SERVICES)}", err=True)
        raise typer.Exit(2)
    ops = {op.name: op for op in operations_of(service)}
    if operation not in ops:
        typer.echo(f"meshop: {service} has no operation {operation!r}; it has: {', '.join(sorted(ops))}", err=True)
        raise typer.Exit(2)
    try:
        configured = setting("MESHOP_POLICIES_FILE")
        path = policies or (Path(configured) if configured else None)
        op = ops[operation]
        resolved = Policies.load(path).for_operation(service, operation, per_try_timeout_s=op.per_try_timeout_s)
    except ConfigError as exc:
        typer.echo(f"meshop: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(describe(op, resolved))


keys = typer.Typer(help="Token signing keys.", no_args_is_help=True)
app.add_typer(keys, name="keys")


@keys.command("rotate")
def keys_rotate(
    data_dir: Annotated[Path, typer.Option(help="The data dir of the running shop.")] = Path(".meshop"),
    url: Annotated[str | None, typer.Option(help="The gateway URL (default: from the data dir).")] = None,
) -> None:
    """Rotate the signing key with no downtime: published now, signing once every verifier has it."""
    from meshop.runtime.admin import ShopAdmin, locate

    async def main() -> None:
        gateway, password = locate(data_dir, url)
        async with ShopAdmin(gateway, password) as admin:
            typer.echo(json.dumps(await admin.request("POST", "/api/users/admin/keys/rotate")))

    _run_or_exit(main())


certs = typer.Typer(help="TLS certificates.", no_args_is_help=True)
app.add_typer(certs, name="certs")


@certs.command("dev")
def certs_dev(
    directory: Annotated[Path, typer.Option("--dir", help="Where to write them.")] = Path(".meshop/certs"),
    host: Annotated[list[str] | None, typer.Option(help="Names the certificate is for (repeatable).")] = None,
) -> None:
    """Create a local CA and a server certificate for localhost signed by it."""
    from meshop.runtime.certs import create_dev_certificates

    paths = create_dev_certificates(directory, hosts=host)
    typer.echo(f"CA (trust it in clients): {paths['ca']}")
    typer.echo(f"export MESHOP_TLS_CERT_FILE={paths['cert']} MESHOP_TLS_KEY_FILE={paths['key']}")


identity = typer.Typer(help="Service identity: the root of trust and each service's credential.", no_args_is_help=True)
app.add_typer(identity, name="identity")


@identity.command("issue")
def identity_issue(
    service: Annotated[list[str] | None, typer.Argument(help="The services (default: every process).")] = None,
    directory: Annotated[Path, typer.Option("--dir", help="The identity directory.")] = Path(".meshop/identity"),
    lifetime: Annotated[float, typer.Option(help="Seconds a certificate lives (at most 3600).")] = 3600.0,
    kubernetes_secrets: Annotated[
        bool,
        typer.Option(
            "--kubernetes-secrets",
            help="Run in a Kubernetes pod: issue from the root mounted at DIR (the meshop-identity-root Secret) "
            "into the Secret --secret through the API, with the pod's service account.",
        ),
    ] = False,
    target: Annotated[
        str, typer.Option("--secret", help="With --kubernetes-secrets: the Secret to apply.")
    ] = "meshop-identity",
) -> None:
    """Issue (or renew) service credentials from the root in DIR: run it more often than LIFETIME / 2.

    What a production issuer runs (on Kubernetes a CronJob with --kubernetes-secrets, every
    15 minutes for the default hour); processes switch to a renewed credential without a
    restart. Creates the root the first time (never with --kubernetes-secrets).
    """
    from meshop.mesh.security.identity import provision
    from meshop.services import PROCESSES

    names = service or list(PROCESSES)
    if kubernetes_secrets:
        from meshop.deploy.kubernetes import InCluster
        from meshop.deploy.secrets import apply_identity

        try:
            where = asyncio.run(
                apply_identity(InCluster.from_pod(), directory, names, lifetime_s=lifetime, name=target)
            )
        except ConfigError as exc:
            typer.echo(f"meshop: {exc}", err=True)
            raise typer.Exit(1) from None
        typer.echo(f"applied {len(names)} credential(s) to Secret {where}, valid {lifetime:g}s")
        return
    try:
        provision(directory, names, lifetime_s=lifetime)
    except ConfigError as exc:
        typer.echo(f"meshop: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"issued {len(names)} credential(s) in {directory / 'services'}, valid {lifetime:g}s")


@identity.command("rotate-root")
def identity_rotate_root(
    directory: Annotated[Path, typer.Option("--dir", help="The identity directory.")] = Path(".meshop/identity"),
) -> None:
    """Make a new root: trusted beside the old ones at once, it signs renewals two minutes later."""
    from meshop.mesh.security.identity import ROOT_TRUST_DELAY_S, rotate_root

    issuer = rotate_root(directory)
    typer.echo(
        f"new root {issuer.kid}: in trust.json now, signing renewals in {ROOT_TRUST_DELAY_S:g}s; "
        "keep the old one in trust.json until the last certificate it signed expires (1 h at most)"
    )


app.add_typer(deploy, name="deploy")
app.add_typer(lab, name="lab")

events = typer.Typer(help="The shop's event streams: tail, dead letters, replay.", no_args_is_help=True)
app.add_typer(events, name="events")

DataDir = Annotated[Path, typer.Option(help="The data dir of the running shop.")]


@events.command("tail")
def events_tail(
    data_dir: DataDir = Path(".meshop"),
    service: Annotated[list[str] | None, typer.Option(help="Only this service's events (repeatable).")] = None,
    count: Annotated[int, typer.Option(min=1, max=10_000, help="How many of the newest events.")] = 20,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Then print new events as they come.")] = False,
    seconds: Annotated[float | None, typer.Option(help="With --follow: stop after this long.")] = None,
) -> None:
    """Print the newest events (JSON lines), and with --follow every new one."""
    from meshop.runtime.events import follow as follow_events
    from meshop.runtime.events import last_events, login_of, nats_url_of

    async def main() -> None:
        url = nats_url_of(data_dir)
        login = login_of(data_dir, "events")
        for record in await last_events(url, services=service, count=count, login=login):
            typer.echo(json.dumps(record))
        if follow:
            async for record in follow_events(url, services=service, seconds=seconds, login=login):
                typer.echo(json.dumps(record))

    _run_or_exit(main())


@events.command("dlq")
def events_dlq(
    data_dir: DataDir = Path(".meshop"),
    count: Annotated[int, typer.Option(min=1, max=10_000, help="How many of the newest dead letters.")] = 50,
) -> None:
    """Print the dead-letter stream: events a consumer gave up on, and why (JSON lines)."""
    from meshop.runtime.events import dead_letter_summary, dead_letters, login_of, nats_url_of

    async def main() -> None:
        url = nats_url_of(data_dir)
        login = login_of(data_dir, "events")
        records = await dead_letters(url, count=count, login=login)
        for record in records:
            typer.echo(json.dumps(record))
        if not records:  # said on stderr: stdout stays JSON lines
            typer.echo(await dead_letter_summary(url, login=login), err=True)

    _run_or_exit(main())


@events.command("replay")
def events_replay(
    consumer: Annotated[str, typer.Argument(help="SERVICE.NAME, e.g. users.order-stats.")],
    data_dir: DataDir = Path(".meshop"),
    url: Annotated[str | None, typer.Option(help="The gateway URL (default: from the data dir).")] = None,
) -> None:
    """Rebuild a consumer's read model from its stream (as the admin, through the gateway)."""
    from meshop.runtime.admin import ShopAdmin, locate

    service = consumer.partition(".")[0]

    async def main() -> None:
        gateway, password = locate(data_dir, url)
        async with ShopAdmin(gateway, password, timeout_s=300) as admin:
            result = await admin.request("POST", f"/api/{service}/admin/consumers/{consumer}/replay")
        typer.echo(json.dumps(result))

    _run_or_exit(main())


def _run_or_exit(coro: Coroutine[Any, Any, None]) -> None:
    try:
        asyncio.run(coro)
    except (ConfigError, OSError) as exc:
        typer.echo(f"meshop: {exc}", err=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        pass


@app.command()
def chaos(
    orders: Annotated[int, typer.Option(min=1, help="Orders to attempt (at least).")] = 300,
    cycles: Annotated[int | None, typer.Option(min=1, help="Fault cycles, at least (default 4; 6 with --lab).")] = None,
    concurrency: Annotated[int, typer.Option(min=1, max=256, help="Concurrent customers.")] = 8,
    postgres: Annotated[
        str | None, typer.Option(help="Run every service on this PostgreSQL server (postgresql://user@host:port).")
    ] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="Where the run's shop keeps its state (default: a temp dir).")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the run's choices, to repeat one.")] = None,
    fault_s: Annotated[
        float | None, typer.Option(min=0.1, help="How long each fault is held (default 3 s; 4.5 s with --lab).")
    ] = None,
    calm_s: Annotated[float, typer.Option(min=0.0, help="Pause between fault cycles.")] = 2.0,
    as_json: Annotated[Path | None, typer.Option("--json", help="Also write the report as JSON here.")] = None,
    lab: Annotated[
        bool, typer.Option("--lab", help="On lab hosts (root): cut hosts, NATS nodes killed and partitioned, restarts.")
    ] = False,
    hosts: Annotated[int, typer.Option(min=4, max=32, help="With --lab: hosts (PostgreSQL on the last).")] = 4,
    gateways: Annotated[int, typer.Option(min=1, max=32, help="With --lab: gateway replicas.")] = 1,
) -> None:
    """Check out under faults (kill -9, NATS restarts, a failing provider, DB locks), then check I1-I10.

    With --lab, the shop runs on lab hosts (`meshop lab up`) and the faults are a host's
    link cut, a NATS node killed or partitioned, a service process killed, a host
    restarted and a rolling restart; customers order until the last fault ends (--orders
    is a minimum) and the report says per fault what they saw.
    """
    import tempfile

    from meshop.chaos.harness import ChaosConfig, ChaosRun, LabChaosRun

    if lab:
        from meshop.lab.hosts import can_create

        if postgres:
            _fail("--lab runs its own PostgreSQL on a lab host: leave out --postgres")
        if not can_create():
            _fail("--lab makes network namespaces: run it as root (with iproute2)")
    config = ChaosConfig(
        orders=orders,
        cycles=cycles or (6 if lab else 4),
        concurrency=concurrency,
        seed=seed,
        database_url=postgres,
        fault_s=fault_s or (4.5 if lab else 3.0),
        calm_s=calm_s,
        lab_hosts=hosts if lab else 0,
        load_throughout=lab,
        lab_gateways=gateways,
    )
    from meshop.lab.hosts import LabError

    kind = LabChaosRun if lab else ChaosRun
    with tempfile.TemporaryDirectory(prefix="meshop-chaos-") as tmp:
        try:
            report = asyncio.run(kind(config, data_dir or Path(tmp)).run())
        except LabError as exc:
            typer.echo(f"meshop chaos: {exc}", err=True)
            raise typer.Exit(1) from None
    for line in report.lines():
        typer.echo(line)
    if as_json is not None:
        as_json.write_text(json.dumps(report.as_dict(), indent=2) + "\n")
    raise typer.Exit(1 if report.violations else 0)


analyze = typer.Typer(help="The seeds' math: efficiency, reliability, Little's law.", no_args_is_help=True)
app.add_typer(analyze, name="analyze")


Live = Annotated[bool, typer.Option("--live", help="Compute it from the running shop's metrics.")]
LiveDir = Annotated[Path, typer.Option(help="With --live: the data dir of the running shop.")]


@analyze.command("efficiency")
def analyze_efficiency(
    loads: Annotated[list[float] | None, typer.Argument(help="Requests per instance.")] = None,
    live: Live = False,
    data_dir: LiveDir = Path(".meshop"),
) -> None:
    """Load-balancing efficiency E = 1 - (max - min) / avg (1 when nothing was sent).

    As the seed writes it: very uneven loads make it negative (0, 0, 300 gives -2), not 0.
    """
    from meshop.analysis import efficiency

    if not live:
        if not loads:
            _fail("give the requests per instance, or --live")
        typer.echo(f"{efficiency(loads or []):.2f}")
        return
    from meshop.analysis.live import efficiencies, scrape

    rows = efficiencies(_live(scrape(data_dir)))
    if not rows:
        typer.echo("no process has called another yet")
    for row in rows:
        sent = ", ".join(f"{i}={n:g}" for i, n in sorted(row.sent.items()))
        typer.echo(f"{row.caller} -> {row.target}: E = {row.efficiency:.2f}  ({sent})")


@analyze.command("reliability")
def analyze_reliability(
    steps: Annotated[list[float] | None, typer.Argument(help="Each step's reliability, 0..1.")] = None,
    live: Live = False,
    data_dir: LiveDir = Path(".meshop"),
) -> None:
    """Serial reliability R = product of the steps' reliabilities (live: checkout's steps)."""
    from meshop.analysis import serial_reliability

    if not live:
        try:
            typer.echo(f"{serial_reliability(steps or []):.3f}")
        except ValueError as exc:
            _fail(str(exc))
        return
    from meshop.analysis.live import checkout_reliability, scrape

    rows, product = checkout_reliability(_live(scrape(data_dir)))
    for row in rows:
        typer.echo(f"orders -> {row.step}: {row.succeeded:g}/{row.calls:g} calls succeeded, R = {row.reliability:.4f}")
    typer.echo(f"checkout R = {product:.4f}")


@analyze.command("littles-law")
def analyze_littles_law(
    arrival_rate: Annotated[float | None, typer.Option(help="lambda: requests per second.")] = None,
    time_in_system: Annotated[float | None, typer.Option(help="W: seconds each request spends in the system.")] = None,
    live: Live = False,
    data_dir: LiveDir = Path(".meshop"),
    seconds: Annotated[float, typer.Option(min=1, max=300, help="With --live: how long to measure.")] = 5.0,
) -> None:
    """Little's law L = lambda x W: requests in the system on average (live: per service)."""
    from meshop.analysis import littles_law

    if not live:
        if arrival_rate is None or time_in_system is None:
            _fail("give --arrival-rate and --time-in-system, or --live")
        try:
            typer.echo(f"L = {littles_law(arrival_rate=arrival_rate or 0, time_in_system=time_in_system or 0):g}")
        except ValueError as exc:
            _fail(str(exc))
        return
    from meshop.analysis.live import littles_law as live_littles_law

    for row in _live(live_littles_law(data_dir, window_s=seconds)):
        typer.echo(
            # W to the microsecond: a gateway answering from cache or with a 429 takes ~0.06 ms
            f"{row.service}: lambda = {row.arrival_rate:.1f}/s, W = {row.time_in_system_s * 1000:.3f} ms, "
            f"L = lambda x W = {row.predicted_l:.4f}; observed in flight {row.observed_l:.3f}"
        )


def _refuse_stale_build() -> None:
    from meshop.runtime.build import refusal

    why = refusal()
    if why is not None:
        _fail(why)


def _port_free(port: int) -> bool:
    """Whether nothing listens on `port` yet: the gateway would fail to bind it, over and over."""
    import socket

    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a closed connection's TIME_WAIT is no owner
        try:
            probe.bind(("", port))
        except OSError:
            return False
    return True


def _fail(message: str) -> NoReturn:
    typer.echo(f"meshop: {message}", err=True)
    raise typer.Exit(2)


def _live(coro: Coroutine[Any, Any, T]) -> T:
    try:
        return asyncio.run(coro)
    except (ConfigError, OSError) as exc:
        typer.echo(f"meshop: {exc}", err=True)
        raise typer.Exit(1) from None


@app.command()
def cost(
    requests: Annotated[float, typer.Option(help="Requests per month.")] = 50e6,
    memory_mb: Annotated[float, typer.Option(help="Memory per execution (MB).")] = 128,
    duration_ms: Annotated[float, typer.Option(help="Average duration (ms).")] = 300,
    payload_kb: Annotated[float, typer.Option(help="Data transferred per request (KB).")] = 3,
    prices: Annotated[Path | None, typer.Option(help="A prices TOML file (default: seed 002's, ap-south-1).")] = None,
) -> None:
    """Seed 002: a direct function invocation against one through an API gateway, per month."""
    from meshop.analysis.cost import Prices, Workload, estimate

    try:
        found = Prices.load(prices)
        workload = Workload(requests, memory_mb, duration_ms, payload_kb)
        result = estimate(workload, found)
    except (ConfigError, ValueError) as exc:
        typer.echo(f"meshop: {exc}", err=True)
        raise typer.Exit(2) from None
    millions = requests / 1e6
    seeds_case = workload == Workload() and prices is None
    lines = [
        f"{millions:g} M requests/month, {memory_mb:g} MB, {duration_ms:g} ms, {payload_kb:g} KB ({found.region})",
        "direct invoke",
        f"  requests  {millions:g} M x ${found.lambda_per_million_requests}/M = ${result.direct_requests:.2f}",
        f"  compute   {result.gb_seconds:,.0f} GB-s x ${found.lambda_per_gb_second:.10f} = ${result.direct_compute:.2f}"
        + ("   (seed 002 prints $31.26)" if seeds_case else ""),
        f"  total     ${result.direct_total:.2f}",
        "API gateway invoke (the gateway alone, as seed 002 prices it)",
        f"  requests  {millions:g} M x ${found.api_gateway_per_million_requests}/M = ${result.gateway_requests:.2f}",
        f"  transfer  {result.transfer_gib:.2f} GiB x ${found.data_transfer_per_gb} = ${result.gateway_transfer:.2f}"
        + ('   (seed 002\'s "143 GB" is GiB)' if seeds_case else ""),
        f"  total     ${result.gateway_total:.2f}",
        f"gateway + the function it invokes: ${result.gateway_with_function:.2f}",
    ]
    typer.echo("\n".join(lines))


@app.command()
def plan(
    rps: Annotated[float, typer.Option(min=0, help="The target: requests per second at the gateway.")],
    headroom: Annotated[
        float, typer.Option(min=0.01, max=0.99, help="Capacity kept free on every instance (0.3: each at <= 70%).")
    ] = 0.3,
    window: Annotated[float, typer.Option(min=1, max=600, help="Seconds to measure the running shop.")] = 10.0,
    data_dir: Annotated[Path, typer.Option(help="The data dir of the running shop.")] = Path(".meshop"),
    url: Annotated[str | None, typer.Option(help="The shop's gateway URL instead of its data dir.")] = None,
    from_file: Annotated[
        Path | None, typer.Option(help="Plan from saved measurements (`--json` prints them) instead of a shop.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the plan and its measurements as JSON.")] = False,
) -> None:
    """Size each service's replicas for RPS from its measured throughput, CPU and latency.

    Measure while the shop carries traffic like the one to plan for: the plan scales the
    measured mix. The model is in meshop.analysis.plan.
    """
    from meshop.analysis.plan import NoTrafficError, measure, measurements_from_json, measurements_to_json
    from meshop.analysis.plan import plan as make_plan

    def measuring(processes: int) -> None:
        typer.echo(f"measuring the running shop ({processes} processes) for {window:g} s…", err=True)

    try:
        if from_file is not None:
            measured = measurements_from_json(json.loads(from_file.read_text()))
        else:
            from meshop.analysis.live import scrape_window

            measured = measure(*_live(scrape_window(data_dir, window, url, measuring=measuring)))
        result = make_plan(measured, rps=rps, headroom=headroom)
    except NoTrafficError as exc:
        hint = ""
        if from_file is None:
            from meshop.runtime.connection import gateway_url_of

            gateway = url or gateway_url_of(data_dir) or "http://127.0.0.1:8080"
            load = f"python bench/checkout.py --url {gateway} --clients 4 --duration {window + 30:g}"
            hint = f", e.g. in another terminal: {load}"
        typer.echo(f"meshop: {exc}{hint}", err=True)
        raise typer.Exit(1) from None
    except (OSError, ValueError) as exc:  # json.JSONDecodeError is a ValueError
        typer.echo(f"meshop: {exc}", err=True)
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(json.dumps({"plan": result.as_dict(), "measurements": measurements_to_json(measured)}, indent=2))
        return
    _print_plan(result)


def _print_plan(result: Plan) -> None:
    from rich.console import Console
    from rich.table import Table

    def num(value: float | None, spec: str, unit: str = "") -> str:
        return "-" if value is None else f"{value:{spec}}{unit}"

    title = (
        f"{result.rps:g} req/s at {result.entry} (measured: {result.entry_rate:.1f} req/s over {result.window_s:.1f} s)"
        f", headroom {result.headroom:.0%}: each instance planned at <= {1 - result.headroom:.0%} of one core"
    )
    table = Table(
        "service", "now", "req/s per instance", "CPU", "capacity per instance", "W", "share", "replicas",
        "L per instance", "note", title=title,
    )  # fmt: skip
    for row in result.services:
        table.add_row(
            row.service,
            str(row.instances_now),
            num(row.per_instance_rate, ".1f"),
            num(row.utilisation, ".0%"),
            num(row.capacity, ".0f", " req/s"),
            num(None if row.time_in_service_s is None else row.time_in_service_s * 1000, ".2f", " ms"),
            num(row.share, ".2f"),
            num(row.replicas, "d"),
            num(row.concurrency, ".1f"),
            row.note,
        )
    console = Console()
    (console if console.is_terminal else Console(width=200)).print(table)  # piped: no wrapped cells
    typer.echo(
        "capacity = requests/s at 100% of one core (measured req/s / CPU); replicas = ceil(share x rps / "
        "(capacity x (1 - headroom))); L = lambda x W per instance at its planned rate (Little's law), "
        "W's CPU part queued again at the planned utilisation."
    )


def main() -> None:
    app()
