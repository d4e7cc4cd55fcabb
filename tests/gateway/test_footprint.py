"""What the gateway and console processes import: only what serving needs (the RSS budget is 80 MB a process)."""

from __future__ import annotations

import subprocess
import sys

import pytest

_PROBE = """
import sys
sys.modules.setdefault("rich", None)  # as the worker entrypoint does
from meshop.runtime.worker import import_nats_without_websockets
import_nats_without_websockets()
import meshop.mesh.service.lifecycle
from meshop.services import load_definition
load_definition(sys.argv[1])
print(" ".join(sorted({m.split(".")[0] for m in sys.modules})))
"""


def _loaded(process: str) -> list[str]:
    """The top-level packages a fresh interpreter holds once it has loaded `process` as the worker does."""
    found = subprocess.run(
        [sys.executable, "-c", _PROBE, process], capture_output=True, text=True, timeout=60, check=True
    )
    return found.stdout.split()


@pytest.mark.parametrize("process", ["gateway", "console"])
def test_a_process_without_a_database_or_redis_loads_neither(process: str) -> None:
    """SQLAlchemy is ~17 MB of a process; redis-py imports OpenTelemetry, ~13 MB more."""
    loaded = _loaded(process)
    assert "meshop" in loaded
    assert "sqlalchemy" not in loaded
    assert "redis" not in loaded
    assert "opentelemetry" not in loaded


@pytest.mark.parametrize("process", ["users", "orders", "gateway"])
def test_a_service_process_does_not_load_aiohttp(process: str) -> None:
    """nats-py imports aiohttp (~11 MB) for a WebSocket transport meshop does not use."""
    loaded = _loaded(process)
    assert "nats" in loaded
    assert "aiohttp" not in loaded


def test_the_console_still_imports_aiohttp_for_itself() -> None:
    loaded = _loaded("console")
    assert "aiohttp" in loaded
