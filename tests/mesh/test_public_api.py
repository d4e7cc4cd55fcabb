"""`meshop.mesh`, the public API: every name it exports is the implementation's own, loaded on use."""

from __future__ import annotations

import enum
import importlib.util
import inspect
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest

import meshop.mesh
import meshop.mesh.testing
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


# --- Options are keyword-only (STYLE.md, "Values, not globals") --------------------------

#: Parameters with a default that stay positional, each for its reason. Keyed by the
#: qualified name of the function that declares them, so subclasses share their base's entry.
POSITIONAL_DEFAULTS = {
    # An exception's message is positional, as in every Python exception:
    # `raise NotFound("no such product")`.
    "ProblemError.__init__(detail)",
    "StepFailed.__init__(detail)",
    # The contract's "what" (service, name, method, path, request, response, access) is
    # spelled positionally in every declaration; its options after `access` are named.
    "Operation.__init__(request)",
    "Operation.__init__(response)",
    "Operation.__init__(access)",
    # A step is its action and the compensation that undoes it, a pair read together:
    # `Step("reserve", reserve, release, pivot=False)`.
    "Step.__init__(compensation)",
    # The request body is what a call sends, not an option of it: `call(op, body, *, ...)`.
    "ServiceClient.call(body)",
    "TestMesh.call(body)",
    # The statement's values, as in SQLAlchemy's own `conn.execute(statement, parameters)`.
    "Conn.execute(parameters)",
    "Conn.scalar(parameters)",
    # The values the path is rendered with: what the method is about.
    "Operation.render_path(params)",
    # What the registry holds: its contents, not an option of it.
    "StaticRegistry.__init__(instances)",
    # Whose settings (the identifying argument; None: the shared mesh settings only).
    "load_settings(service)",
    # The clock's reading itself, the one value a clock has: `FakeClock(0.0)`.
    "FakeClock.__init__(now)",
}


def _exported() -> list[tuple[str, Any]]:
    """Every class and function `meshop.mesh` and `meshop.mesh.testing` export."""
    found = []
    for module in (meshop.mesh, meshop.mesh.testing):
        for name in module.__all__:
            value = getattr(module, name)
            if inspect.isclass(value) or inspect.isroutine(value):
                found.append((f"{module.__name__}.{name}", value))
    return found


def _interpreted(value: Any) -> Any:
    """`value` as its module's source defines it: a compiled class's methods have no
    signature to read, so the module's `.py` (beside its extension) is loaded apart."""
    if not _compiled(value):
        return value
    name = value.__module__
    pure = _PURE.get(name)
    if pure is None:
        source = Path(sys.modules[name].__file__ or "").parent / (name.rpartition(".")[2] + ".py")
        spec = importlib.util.spec_from_file_location(f"_interpreted_{name}", source)
        assert spec is not None
        assert spec.loader is not None
        pure = _PURE[name] = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = pure  # dataclasses look their module up there
        spec.loader.exec_module(pure)
    return getattr(pure, value.__qualname__)


_PURE: dict[str, types.ModuleType] = {}


def _callables() -> list[tuple[str, Any, Any]]:
    """(where, what to sign, the function declaring it): exported functions and classes,
    and the public methods of the exported classes, but not an Enum's value lookup.
    Compiled ones are read from their source (`_interpreted`)."""
    found = []
    for where, exported in _exported():
        value = _interpreted(exported)
        if not inspect.isclass(value):
            found.append((where, value, value))
            continue
        if issubclass(value, enum.Enum):
            continue
        found.append((where, value, value.__init__))
        for attr, member in vars(value).items():
            function = member.__func__ if isinstance(member, (classmethod, staticmethod)) else member
            if not attr.startswith("_") and inspect.isroutine(function):
                found.append((f"{where}.{attr}", getattr(value, attr), function))
    return found


def _signature(value: Any) -> inspect.Signature | None:
    """`value`'s signature; a compiled class may have one on its `__init__` only."""
    for candidate, drop_self in ((value, False), (getattr(value, "__init__", None), inspect.isclass(value))):
        try:
            signature = inspect.signature(candidate)
        except (ValueError, TypeError):  # a builtin's or a compiled class's, without a text signature
            continue
        parameters = list(signature.parameters.values())
        return signature.replace(parameters=parameters[1:]) if drop_self else signature
    return None


def _positional_options(value: Any, declared_by: Any) -> list[str]:
    """`qualname(parameter)` of each parameter of `value` that has a default and may be passed positionally."""
    signature = _signature(value)
    if signature is None:
        return []
    qualname = getattr(declared_by, "__qualname__", getattr(value, "__qualname__", repr(value)))
    return [
        f"{qualname}({p.name})"
        for p in signature.parameters.values()
        if p.default is not p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]


def _compiled(value: Any) -> bool:
    """True when `value` comes from a mypyc-compiled module (`make compile`)."""
    module = sys.modules[value.__module__]
    return str(getattr(module, "__file__", "")).endswith((".so", ".pyd"))


def test_the_check_finds_an_option_that_may_be_passed_positionally() -> None:
    def grant(user: str, role: str = "viewer", *, audit: bool = True) -> None: ...

    assert _positional_options(grant, grant) == [f"{grant.__qualname__}(role)"]


def test_every_option_of_the_public_api_is_keyword_only() -> None:
    """A new positional option fails here: make it keyword-only (`*,`), or justify it above."""
    found = {option for _, value, declared_by in _callables() for option in _positional_options(value, declared_by)}
    assert sorted(found - POSITIONAL_DEFAULTS) == []
    stale = POSITIONAL_DEFAULTS - found
    assert sorted(stale) == [], "an allowed exception no longer exists: remove it"


def test_every_public_callable_has_a_signature_to_check() -> None:
    """Only a compiled class, or a class whose constructor is a builtin's (an exception's), has none."""
    unsigned = [
        where
        for where, value, declared_by in _callables()
        if _signature(value) is None
        and not _compiled(value)
        and not isinstance(declared_by, types.WrapperDescriptorType)
    ]
    assert unsigned == []


def test_every_exported_class_and_function_has_its_own_docstring() -> None:
    """Its own: a subclass does not pass with its base's (every ProblemError once read as one).

    mypyc keeps no docstrings: the compiled modules' are checked when running pure Python.
    """
    missing = [
        where
        for where, value in _exported()
        if not _compiled(value) and not (vars(value).get("__doc__") if inspect.isclass(value) else value.__doc__)
    ]
    assert missing == []
