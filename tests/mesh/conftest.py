"""Fixtures of the mesh's tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.mesh.nats_cluster import running_cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A 3-node JetStream cluster of this module's own, its meta leader elected."""
    with running_cluster(tmp_path_factory.mktemp("cluster")) as url:
        yield url
