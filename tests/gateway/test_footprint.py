"""What the gateway and console processes import: only what serving needs (the RSS budget is 80 MB a process)."""

from __future__ import annotations

import subprocess
import sys

import pytest

_PROBE = """
import sys
sys.modules.setdefault("rich", None)  # as the worker entrypoint does
import meshop.mesh.service
from meshop.services import load_definition
load_definition(sys.argv[1])
print(" ".join(sorted({m.split(".")[0] for m in sys.modules})))
"""


@pytest.mark.parametrize("process", ["gateway", "console"])
def test_a_process_without_a_database_or_redis_loads_neither(process: str) -> None:
    """SQLAlchemy is ~17 MB of a process; redis-py imports OpenTelemetry, ~13 MB more."""
    loaded = subprocess.run(
        [sys.executable, "-c", _PROBE, process], capture_output=True, text=True, timeout=60, check=True
    ).stdout.split()
    assert "meshop" in loaded
    assert "sqlalchemy" not in loaded
    assert "redis" not in loaded
    assert "opentelemetry" not in loaded
