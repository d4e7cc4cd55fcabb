"""`meshop.mesh`, the public API: every name it exports is the implementation's own, loaded on use."""

from __future__ import annotations

import subprocess
import sys

import pytest

import meshop.mesh
from meshop.mesh.api.routing import Api
from meshop.mesh.events.envelope import EventType
from meshop.mesh.telemetry import tracing


def test_every_exported_name_resolves_to_the_implementations_object() -> None:
    assert sorted(meshop.mesh.__all__) == meshop.mesh.__all__
    for name in meshop.mesh.__all__:
        assert getattr(meshop.mesh, name) is not None, name
    assert meshop.mesh.Api is Api
    assert meshop.mesh.EventType is EventType
    assert meshop.mesh.tracing is tracing
    assert set(meshop.mesh.__all__) <= set(dir(meshop.mesh))


def test_a_name_it_does_not_export_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'Proxy'"):
        _ = meshop.mesh.Proxy  # type: ignore[attr-defined]


def test_importing_the_api_loads_only_what_is_used() -> None:
    """A migration child or a CLI command that needs one name does not import the rest."""
    code = (
        "import sys; from meshop.mesh import Operation; "
        "print(sorted(m for m in sys.modules if m.startswith('meshop.mesh.')))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "meshop.mesh.api.operation" in loaded
    for heavy in ("meshop.mesh.data.store", "meshop.mesh.client.client", "meshop.mesh.service.lifecycle"):
        assert heavy not in loaded


def test_a_contract_declaring_event_types_loads_neither_the_database_nor_the_outbox() -> None:
    """Contracts declare EventTypes; the gateway and the console import contracts without a database."""
    code = (
        "import sys; from meshop.mesh import EventType, Operation; "
        "print(sorted(m for m in sys.modules if m.startswith(('meshop.mesh.', 'sqlalchemy'))))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "meshop.mesh.events.envelope" in loaded
    for heavy in ("meshop.mesh.events.outbox", "meshop.mesh.data.store", "sqlalchemy"):
        assert heavy not in loaded
