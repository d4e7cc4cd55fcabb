"""`meshop lab`: the shop on several hosts of one machine (network namespaces; needs root)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

lab = typer.Typer(help="The shop across lab hosts: network namespaces, a NATS cluster (root).", no_args_is_help=True)

DirOption = Annotated[Path, typer.Option("--dir", help="The lab's directory (state, secrets, logs).")]


@lab.command("up")
def lab_up(
    directory: DirOption = Path(".meshop-lab"),
    hosts: Annotated[int, typer.Option(min=4, max=32, help="Hosts: three NATS nodes, PostgreSQL on the last.")] = 4,
    replicas: Annotated[int, typer.Option(min=1, max=32, help="Replicas of each service, each on its own host.")] = 2,
    gateways: Annotated[int, typer.Option(min=1, max=32, help="Gateway replicas, on the first hosts.")] = 1,
) -> None:
    """Make the hosts and start the shop on them; print its layout."""
    from meshop.lab.hosts import LabError, can_create
    from meshop.lab.shop import up

    if not can_create():
        raise typer.BadParameter("the lab makes network namespaces: run it as root (with iproute2)")
    try:
        up(directory, hosts=hosts, replicas=replicas, gateways=gateways, say=typer.echo)
    except (LabError, ValueError) as exc:
        typer.echo(f"meshop lab: {exc}", err=True)
        raise typer.Exit(1) from None
    _print_layout(directory)


@lab.command("status")
def lab_status(directory: DirOption = Path(".meshop-lab")) -> None:
    """The lab's hosts and processes: host, zone, address, pid, running or not."""
    from meshop.lab.hosts import LabError

    try:
        _print_layout(directory)
    except LabError as exc:
        typer.echo(f"meshop lab: {exc}", err=True)
        raise typer.Exit(1) from None


@lab.command("down")
def lab_down(directory: DirOption = Path(".meshop-lab")) -> None:
    """Stop every process the lab started and remove its hosts."""
    from meshop.lab.hosts import LabError
    from meshop.lab.shop import down

    try:
        down(directory, say=typer.echo)
    except LabError as exc:
        typer.echo(f"meshop lab: {exc}", err=True)
        raise typer.Exit(1) from None


def _print_layout(directory: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    from meshop.lab.shop import status

    state, rows = status(directory)
    hosts = Table(title=f"lab {state.lab_id}: hosts")
    for column in ("host", "zone", "address", "namespace"):
        hosts.add_column(column)
    for h in state.hosts:
        hosts.add_row(h["name"], h["zone"], h["address"], h["netns"])
    processes = Table(title="processes")
    for column in ("process", "host", "zone", "address", "pid", "state"):
        processes.add_column(column)
    for row in rows:
        processes.add_row(*(row[c] for c in ("process", "host", "zone", "address", "pid", "state")))
    console = Console()
    console.print(hosts)
    console.print(processes)
    typer.echo(f"NATS: {state.nats_url}")
    typer.echo(f"gateway: {', '.join(state.gateway_urls) or '-'}")
    typer.echo(f"CLI: meshop status --data-dir {state.directory}")
