"""Validation messages: a pattern is named by what it stands for, not by its regex."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
import pytest

from meshop.mesh.api.routing import decode_body
from meshop.mesh.api.validation import validation_message
from meshop.mesh.errors import Unprocessable

Code = Annotated[str, msgspec.Meta(pattern=r"^[A-Z]{3}\d$", description="three capitals and a digit")]
Email = Annotated[
    str,
    msgspec.Meta(pattern=r"^[^@\x00-\x20]+@[^@\x00-\x20]+$", description="an email address", examples=["a@b.example"]),
]
Plain = Annotated[str, msgspec.Meta(pattern=r"^\d+\.\d+$")]


class Line(msgspec.Struct, kw_only=True):
    code: Code
    note: Code | None = None


class Form(msgspec.Struct, kw_only=True):
    email: Email | None = None
    version: Plain = "1.0"
    lines: list[Line] = []
    tags: dict[str, Code] = {}
    parent: Form | None = None


def message(body: dict[str, Any], type_: Any = Form) -> str:
    with pytest.raises(msgspec.ValidationError) as raised:
        msgspec.convert(body, type_)
    return validation_message(raised.value, type_)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"email": "nobody"}, "email: must be an email address, like a@b.example"),
        ({"lines": [{"code": "AB1"}]}, "lines[0].code: must be three capitals and a digit"),
        ({"lines": [{"code": "ABC1", "note": "x"}]}, "lines[0].note: must be three capitals and a digit"),
        ({"tags": {"k": "nope"}}, "tags[...]: must be three capitals and a digit"),
        ({"parent": {"parent": {"email": "x"}}}, "parent.parent.email: must be an email address, like a@b.example"),
        ({"version": "1"}, r"version: must match the regular expression ^\d+\.\d+$"),
    ],
)
def test_a_pattern_is_named_by_its_description_or_its_unescaped_regex(body: dict[str, Any], expected: str) -> None:
    assert message(body) == expected


def test_a_value_that_is_itself_constrained_is_the_body() -> None:
    assert message("ab1", Code) == "the body: must be three capitals and a digit"  # type: ignore[arg-type]


def test_other_messages_are_msgspec_s_own() -> None:
    assert message({"lines": [{}]}) == "Object missing required field `code` - at `$.lines[0]`"
    assert message({"version": 1}) == "Expected `str`, got `int` - at `$.version`"


def test_an_invalid_body_is_422_with_the_described_message() -> None:
    with pytest.raises(Unprocessable) as raised:
        decode_body(b'{"email": "nobody"}', Form)
    assert raised.value.detail == "email: must be an email address, like a@b.example"
    assert "\\" not in str(raised.value.detail)
