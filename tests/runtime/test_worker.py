"""The worker process honours SIGTERM before its event loop runs (a container's PID 1 would not)."""

from __future__ import annotations

import subprocess
import sys

#: A worker whose service takes long to load, signalled meanwhile (in a child: without the
#: handler, SIGTERM would end the test run itself).
CHILD = """
import os, signal, sys, time
import meshop.services

def load_definition(_name):
    os.kill(os.getpid(), signal.SIGTERM)  # arrives while the process imports its service
    time.sleep(5)
    sys.exit(3)

meshop.services.load_definition = load_definition
from meshop.runtime.worker import run_service
run_service("catalog")
"""


def test_sigterm_while_loading_the_service_exits_cleanly_at_once() -> None:
    child = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=4)
    assert child.returncode == 0, child.stderr
