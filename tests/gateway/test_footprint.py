"""What a gateway process imports: only what serving needs (the RSS budget is 80 MB a process)."""

from __future__ import annotations

import subprocess
import sys

_PROBE = """
import sys
sys.modules.setdefault("rich", None)  # as the worker entrypoint does
import meshop.gateway.app
print(" ".join(sorted({m.split(".")[0] for m in sys.modules})))
"""


def test_the_gateway_imports_neither_redis_nor_opentelemetry_unless_configured() -> None:
    """redis-py imports OpenTelemetry: ~13 MB of a gateway that limits rates locally."""
    loaded = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=60, check=True
    ).stdout.split()
    assert "meshop" in loaded
    assert "redis" not in loaded
    assert "opentelemetry" not in loaded
