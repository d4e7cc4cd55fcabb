"""The reviews service in a test mesh beside the shop's catalog, and customers' tokens."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from meshop.mesh import SigningKey, TokenIssuer, TokenVerifier
from meshop.mesh.testing import TestMesh, TestService
from meshop.services.catalog import app as catalog_app
from reviews import app

#: Who signs the customers' tokens in these tests (in the shop: the users service).
_KEY = SigningKey.generate()


async def _jwks() -> dict[str, Any]:
    return {"keys": [_KEY.public_jwk()]}


@pytest.fixture
def token() -> Callable[..., str]:
    """A signed-in customer's token: `token("u-1")`, or an admin's: `token("a", "admin")`."""
    issuer = TokenIssuer(_KEY)
    return lambda user_id, *roles: issuer.issue(user_id, list(roles or ["customer"]))


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[TestMesh]:
    """Catalog (the shop's, seeded) and reviews, in this process; no NATS, so no consumers run."""
    async with TestMesh(tmp_path, verifier=TokenVerifier(_jwks)) as mesh:
        await mesh.start(catalog_app.DEFINITION)
        yield mesh


@pytest.fixture
async def reviews(mesh: TestMesh) -> TestService:
    return await mesh.start(app.DEFINITION)
