"""`meshop run` loads a shop process by name, or another service's definition as module:ATTRIBUTE."""

from __future__ import annotations

import subprocess
import sys

import pytest

from meshop.services import load_definition


def test_a_shop_process_is_loaded_by_its_name() -> None:
    assert load_definition("catalog").name == "catalog"


def test_a_service_built_elsewhere_is_loaded_as_module_and_attribute() -> None:
    """examples/ is on pytest's path, as a service's own package would be installed."""
    definition = load_definition("reviews.app:DEFINITION")
    assert definition.name == "reviews"
    assert definition.outbox


@pytest.mark.parametrize(
    ("spec", "why"),
    [
        ("nosuch", "unknown service 'nosuch'"),
        ("no_such_module:DEFINITION", "cannot load service"),
        ("reviews.app:NOTHING", "cannot load service"),
        ("reviews.app:build", "not a meshop.mesh.ServiceDefinition"),
    ],
)
def test_what_is_no_service_definition_is_refused_with_why(spec: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        load_definition(spec)


def test_the_worker_exits_2_naming_a_spec_it_cannot_load() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "meshop.runtime.worker", "no_such_module:DEFINITION"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert run.returncode == 2
    assert "cannot load service 'no_such_module:DEFINITION'" in run.stderr
