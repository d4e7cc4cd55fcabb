"""`meshop deploy`: what running the shop on Kubernetes needs that manifests cannot hold."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from meshop.mesh.errors import ConfigError

deploy = typer.Typer(help="Kubernetes: generate the Secrets and the NetworkPolicies.", no_args_is_help=True)


@deploy.command("secrets")
def secrets(
    out: Annotated[Path, typer.Option("--out", help="A new directory for the Secret manifests (0700, files 0600).")],
    namespace: Annotated[str | None, typer.Option(help="The namespace to put in each Secret.")] = None,
    database_url: Annotated[
        str | None,
        typer.Option(
            help="An external PostgreSQL (postgresql://user:password@host:5432); default: the in-cluster one."
        ),
    ] = None,
) -> None:
    """Write every Secret the shop needs, generated fresh: identity, NATS users, admin, scrape token, database.

    Apply them once with the command printed; `meshop identity issue --kubernetes-secrets`
    (a CronJob) keeps the service credentials renewed after that.
    """
    from meshop.deploy.secrets import generate, write

    try:
        paths = write(out, generate(database_url=database_url, namespace=namespace))
    except ConfigError as exc:
        typer.echo(f"meshop: {exc}", err=True)
        raise typer.Exit(2) from None
    for path in paths:
        typer.echo(f"wrote {path}")
    typer.echo(f"apply them with: kubectl apply --server-side -f {out}")


@deploy.command("network-policies")
def network_policies(
    namespace: Annotated[str | None, typer.Option(help="The namespace to put in each policy.")] = None,
    port: Annotated[
        int, typer.Option(min=1, max=65535, help="The port every process listens on (MESHOP_PORT).")
    ] = 8080,
    edges: Annotated[bool, typer.Option("--edges", help="List the allowed connections and why, instead.")] = False,
) -> None:
    """Print NetworkPolicies (YAML) allowing exactly the shop's connections: default deny, then
    the gateway from anywhere, each service from its allowed callers and the scrapers, NATS
    from meshop pods, and each process to NATS, DNS, its callees, PostgreSQL, Redis and the
    OTel Collector.
    """
    from meshop.deploy._yaml import dump_all
    from meshop.deploy.network import edges as allowed
    from meshop.deploy.network import policies

    if edges:
        for edge in allowed(port=port):
            where = f"{edge.port}/{edge.protocol}" if edge.port is not None else "any port"
            typer.echo(f"{edge.source} -> {edge.target} {where}  [{edge.kind}] {edge.why}")
        return
    from meshop.deploy.network import HEADER

    typer.echo(HEADER + dump_all(policies(namespace=namespace, port=port)), nl=False)
