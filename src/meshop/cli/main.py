"""`meshop up`, `meshop run`, `meshop status`."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated

import typer

from meshop.mesh.errors import ConfigError

app = typer.Typer(help="meshop: the mesh and the shop built on it.", no_args_is_help=True, add_completion=False)


@app.command()
def run(
    service: Annotated[str, typer.Argument(help="users, catalog, inventory, orders, payments, shipping or gateway")],
) -> None:
    """Run one process of SERVICE (the production entrypoint)."""
    from meshop.runtime.worker import run_service

    raise typer.Exit(run_service(service))


@app.command()
def up(
    port: Annotated[int, typer.Option(help="The gateway's port.")] = 8080,
    replicas: Annotated[list[str] | None, typer.Option("--replicas", help="SERVICE=N, repeatable.")] = None,
    data_dir: Annotated[Path, typer.Option(help="Where state lives (databases, NATS store).")] = Path(".meshop"),
) -> None:
    """Run the whole shop on this machine: NATS, six services and the gateway."""
    from meshop.runtime.supervisor import Supervisor, parse_replicas
    from meshop.runtime.worker import use_uvloop

    try:
        counts = parse_replicas(replicas or [])
    except ValueError as exc:
        typer.echo(f"meshop: {exc}", err=True)
        raise typer.Exit(2) from None
    use_uvloop()
    code = asyncio.run(Supervisor(data_dir=data_dir, gateway_port=port, replicas=counts).run())
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

    table = Table("service", "instance", "pid", "address", "health")
    for row in rows:
        table.add_row(row["service"], row["instance_id"], str(row["pid"]), row["address"], row["health"])
    Console().print(table)


@app.command()
def explain(
    service: Annotated[str, typer.Argument(help="The service, e.g. inventory.")],
    operation: Annotated[str, typer.Argument(help="The operation, e.g. reserve.")],
    policies: Annotated[Path | None, typer.Option(help="A policies TOML file (default: MESHOP_POLICIES_FILE).")] = None,
) -> None:
    """Print the resilience chain a call to SERVICE OPERATION goes through, with its policy."""
    import os

    from meshop.contracts import SERVICES, operations_of
    from meshop.mesh.resilience.config import Policies
    from meshop.mesh.resilience.explain import explain as describe

    if service not in SERVICES:
        typer.echo(f"meshop: unknown service {service!r}; known: {', '.join(SERVICES)}", err=True)
        raise typer.Exit(2)
    ops = {op.name: op for op in operations_of(service)}
    if operation not in ops:
        typer.echo(f"meshop: {service} has no operation {operation!r}; it has: {', '.join(sorted(ops))}", err=True)
        raise typer.Exit(2)
    path = policies or (Path(os.environ["MESHOP_POLICIES_FILE"]) if os.environ.get("MESHOP_POLICIES_FILE") else None)
    try:
        resolved = Policies.load(path).for_operation(service, operation)
    except ConfigError as exc:
        typer.echo(f"meshop: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(describe(ops[operation], resolved))


analyze = typer.Typer(help="The seeds' math: efficiency, reliability, Little's law.", no_args_is_help=True)
app.add_typer(analyze, name="analyze")


@analyze.command("efficiency")
def analyze_efficiency(loads: Annotated[list[float], typer.Argument(help="Requests per instance.")]) -> None:
    """Load-balancing efficiency E = 1 - (max - min) / avg."""
    from meshop.analysis import efficiency

    typer.echo(f"{efficiency(loads):.2f}")


@analyze.command("reliability")
def analyze_reliability(steps: Annotated[list[float], typer.Argument(help="Each step's reliability, 0..1.")]) -> None:
    """Serial reliability R = product of the steps' reliabilities."""
    from meshop.analysis import serial_reliability

    try:
        typer.echo(f"{serial_reliability(steps):.3f}")
    except ValueError as exc:
        typer.echo(f"meshop: {exc}", err=True)
        raise typer.Exit(2) from None


@analyze.command("littles-law")
def analyze_littles_law(
    arrival_rate: Annotated[float, typer.Option(help="lambda: requests per second.")],
    time_in_system: Annotated[float, typer.Option(help="W: seconds each request spends in the system.")],
) -> None:
    """Little's law L = lambda x W: requests in the system on average."""
    from meshop.analysis import littles_law

    try:
        typer.echo(f"L = {littles_law(arrival_rate=arrival_rate, time_in_system=time_in_system):g}")
    except ValueError as exc:
        typer.echo(f"meshop: {exc}", err=True)
        raise typer.Exit(2) from None


def main() -> None:
    app()
