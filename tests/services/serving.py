"""A service's API served over real HTTP on a migrated database, without NATS or a registry."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from starlette.applications import Starlette

from meshop.mesh.data.store import Database
from meshop.mesh.headers import IDENTITY_HEADER
from meshop.mesh.security.identity import CredentialFiles
from meshop.mesh.security.tokens import TokenVerifier
from meshop.mesh.service.lifecycle import Runtime, ServiceDefinition
from meshop.mesh.service.settings import Settings
from meshop.mesh.transport.server import HttpServer


def caller_headers(identity_dir: Path, caller: str, callee: str) -> dict[str, str]:
    """The identity `caller` sends to `callee`'s INTERNAL operations (credentials: the `identity_dir` fixture)."""
    return {IDENTITY_HEADER: CredentialFiles(identity_dir, caller).minter.header(callee)}


@asynccontextmanager
async def serve(
    db_url: str,
    definition: ServiceDefinition,
    *,
    client: Any = None,
    verifier: TokenVerifier | None = None,
    seed: Callable[[Database], Awaitable[None]] | None = None,
    identity_dir: Path | None = None,
) -> AsyncIterator[tuple[str, Database]]:
    """The service's base URL and database while in the block; `client` answers its calls to others.

    Its adapters come from `definition.adapters`, as in a process: a test injects fakes by
    replacing that factory (`dataclasses.replace(DEFINITION, adapters=...)`).
    """
    name = definition.name
    assert definition.migrations is not None
    settings = Settings()
    db = Database(db_url, name=name)
    await db.ensure_exists()
    await db.migrate(definition.migrations)
    if seed is not None:
        await seed(db)
    runtime = Runtime(
        settings=settings,
        service=name,
        instance_id="test",
        nc=None,  # type: ignore[arg-type]
        registry=None,  # type: ignore[arg-type]
        client=client,
        db=db,
        adapters=definition.adapters(settings) if definition.adapters is not None else None,
    )
    api = await definition.build(runtime)
    api.verifier = api.verifier or verifier
    if identity_dir is not None:  # its INTERNAL operations answer the services their contract lists
        api.callers = CredentialFiles(identity_dir, name).verifier
    server = HttpServer(Starlette(routes=api.routes()), host="127.0.0.1", port=0)
    port = await server.start()
    try:
        yield f"http://127.0.0.1:{port}", db
    finally:
        await server.stop()
        await db.close()
