"""`meshop status` reads the registry's keys: an empty registry is no instances, a read that
timed out is tried again and then reported, never taken for "no instances"."""

from __future__ import annotations

from typing import Any

import msgspec
import nats.errors
import pytest
from nats.js.errors import NoKeysError

from meshop.mesh.errors import ConfigError
from meshop.mesh.registry.base import Instance
from meshop.runtime.inspect import _keys, _registered


class Registry:
    """What `kv.keys()` answers, in turn: a list of keys, or an exception to raise; `get`
    answers any key with one instance."""

    def __init__(self, *answers: Any) -> None:
        self.answers = list(answers)
        self.reads = 0

    async def keys(self) -> list[str]:
        self.reads += 1
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return list(answer)

    async def get(self, key: str) -> Any:
        service, _, instance_id = key.partition(".")
        value = msgspec.json.encode(Instance(service=service, instance_id=instance_id, address="h", port=1, pid=1))
        return type("Entry", (), {"value": value})()


async def test_an_empty_registry_has_no_keys() -> None:
    assert await _keys(Registry(NoKeysError())) == []  # type: ignore[arg-type]


async def test_a_read_that_timed_out_is_tried_again() -> None:
    registry = Registry(nats.errors.TimeoutError(), TimeoutError(), ["catalog.i1"])
    assert await _keys(registry) == ["catalog.i1"]  # type: ignore[arg-type]
    assert registry.reads == 3


async def test_a_registry_that_never_answers_is_an_error_not_an_empty_shop() -> None:
    registry = Registry(*(TimeoutError() for _ in range(3)))
    with pytest.raises(ConfigError, match="did not answer in time"):
        await _keys(registry)  # type: ignore[arg-type]


async def test_an_empty_listing_is_read_again_before_it_is_believed() -> None:
    registry = Registry(NoKeysError(), ["catalog.i1"])
    [instance] = await _registered(registry, pause_s=0)  # type: ignore[arg-type]
    assert (instance.service, instance.instance_id) == ("catalog", "i1")
    assert await _registered(Registry(NoKeysError(), NoKeysError(), NoKeysError()), pause_s=0) == []  # type: ignore[arg-type]
