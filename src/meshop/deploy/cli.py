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
