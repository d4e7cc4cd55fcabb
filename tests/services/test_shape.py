"""Every service has the same shape (README, "A service's shape"; docs/decisions/0029)."""

from __future__ import annotations

import importlib
import inspect
from dataclasses import replace
from pathlib import Path

import pytest

import meshop.services
from meshop.mesh import ConfigError, Settings
from meshop.mesh.errors import StateError
from meshop.mesh.service.lifecycle import Runtime, ServiceDefinition
from meshop.services.payments import app as payments_app
from meshop.services.payments.providers import SimulatedProvider
from meshop.services.shipping import app as shipping_app

SERVICES = ["catalog", "inventory", "orders", "payments", "shipping", "users"]
HANDLERS = {
    "catalog": "Catalog",
    "inventory": "Inventory",
    "orders": "Orders",
    "payments": "Payments",
    "shipping": "Shipping",
    "users": "Users",
}


@pytest.mark.parametrize("name", SERVICES)
def test_a_service_has_the_same_modules_as_every_other(name: str) -> None:
    folder = Path(meshop.services.__file__).parent / name
    for module in ("app.py", "handlers.py", "domain.py", "store.py", "events.py"):
        assert (folder / module).is_file(), f"{name} has no {module}"
    assert (folder / "migrations").is_dir()
    assert (folder / "providers.py").is_file() == (name in ("payments", "shipping"))
    app = importlib.import_module(f"meshop.services.{name}.app")
    assert isinstance(app.DEFINITION, ServiceDefinition)
    assert app.DEFINITION.name == name
    handlers = importlib.import_module(f"meshop.services.{name}.handlers")
    parameters = inspect.signature(getattr(handlers, HANDLERS[name])).parameters.values()
    assert parameters, f"{HANDLERS[name]} takes its dependencies"
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in parameters)


def test_adapters_are_built_from_the_settings_by_the_definitions_factory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHOP_PAYMENTS_SIMULATED_FAILURE_RATE", "0.25")
    assert payments_app.DEFINITION.adapters is not None
    built = payments_app.DEFINITION.adapters(Settings())
    assert isinstance(built, payments_app.Adapters)
    assert isinstance(built.provider, SimulatedProvider)
    assert built.provider._failure_rate == 0.25
    monkeypatch.setenv("MESHOP_PAYMENTS_SIMULATED_FAILURE_RATE", "2")
    with pytest.raises(ConfigError, match="MESHOP_PAYMENTS_SIMULATED_FAILURE_RATE"):
        payments_app.DEFINITION.adapters(Settings())


def test_a_test_injects_its_adapters_by_replacing_the_factory() -> None:
    fake = shipping_app.Adapters(carrier=shipping_app.SimulatedCarrier())
    definition = replace(shipping_app.DEFINITION, adapters=lambda _settings: fake)
    assert definition.adapters is not None
    runtime = runtime_with(definition.adapters(Settings()))
    assert runtime.adapter(shipping_app.Adapters) is fake


def test_adapters_of_another_kind_than_build_expects_are_a_state_error() -> None:
    runtime = runtime_with(shipping_app.Adapters(carrier=shipping_app.SimulatedCarrier()))
    with pytest.raises(StateError, match=r"shipping\.app\.Adapters, not meshop\.services\.payments\.app\.Adapters"):
        runtime.adapter(payments_app.Adapters)
    with pytest.raises(StateError, match=r"adapters are builtins\.NoneType"):
        runtime_with(None).adapter(payments_app.Adapters)


def runtime_with(adapters: object) -> Runtime:
    return Runtime(
        settings=Settings(),
        service="test",
        instance_id="test",
        nc=None,  # type: ignore[arg-type]
        registry=None,  # type: ignore[arg-type]
        client=None,  # type: ignore[arg-type]
        adapters=adapters,
    )
