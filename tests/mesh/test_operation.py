"""Operations: paths, subjects and retry safety defined once."""

from __future__ import annotations

import msgspec
import pytest

from meshop.mesh.api.operation import Operation


def test_subject_and_qualified_name_derive_from_the_name() -> None:
    op: Operation[None, None] = Operation("inventory", "reserve", "POST", "/reservations")
    assert op.qualified == "inventory.reserve"
    assert op.subject == "meshop.rpc.inventory.reserve"


def test_match_extracts_path_parameters() -> None:
    op: Operation[None, None] = Operation("s", "get", "GET", "/items/{id}/parts/{part}")
    assert op.match("/items/7/parts/x") == {"id": "7", "part": "x"}
    assert op.match("/items/7") is None
    assert op.match("/items/7/parts/x/y") is None


def test_render_path_escapes_parameters() -> None:
    op: Operation[None, None] = Operation("s", "get", "GET", "/items/{id}")
    assert op.render_path({"id": "a/b c"}) == "/items/a%2Fb%20c"
    with pytest.raises(ValueError, match="missing path parameter"):
        op.render_path({})


def test_a_post_is_retry_safe_only_when_declared_idempotent() -> None:
    assert not Operation("s", "a", "POST", "/a").retry_safe
    assert Operation("s", "b", "POST", "/b", idempotent=True).retry_safe
    assert Operation("s", "c", "GET", "/c").retry_safe


@pytest.mark.parametrize(("method", "path"), [("POST", "no-slash"), ("TRACE", "/x")])
def test_invalid_definitions_are_rejected(method: str, path: str) -> None:
    with pytest.raises(ValueError, match=r"path|method"):
        Operation("s", "x", method, path)


class _AllOptional(msgspec.Struct, kw_only=True):
    reason: str | None = None
    tags: list[str] = []


class _OneRequired(msgspec.Struct, kw_only=True):
    name: str
    reason: str | None = None


@pytest.mark.parametrize(
    ("request_type", "optional"),
    [(_AllOptional, True), (_OneRequired, False), (list[str], False), (None, False)],
)
def test_a_body_is_optional_only_when_no_field_of_the_request_is_required(
    request_type: type[object] | None, optional: bool
) -> None:
    op: Operation[object, None] = Operation("s", "act", "POST", "/act", request_type)
    assert op.body_optional is optional
