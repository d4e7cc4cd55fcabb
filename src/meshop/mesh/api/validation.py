"""Validation messages a client's user can act on, from msgspec's.

msgspec names a failed pattern by its regular expression, as Python's `repr` prints it:
"Expected `str` matching regex '^[^@\\\\x00-\\\\x20\\\\x7f]+@…$' - at `$.email`". Nobody
filling in a form can act on that. A pattern constraint says what it stands for in its
`Meta` (`description`, and `examples` for a value that fits), which the OpenAPI schema
shows as well, and the message becomes "email: must be an email address, like
name@example.com". A pattern without a description is still named, once unescaped.
Every other msgspec message is left as it is: they already say what was expected.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any

import msgspec
import msgspec.inspect as mi

__all__ = ["validation_message"]

# msgspec 0.18+: "Expected `str` matching regex <repr of the pattern>[ - at `<path>`]".
_PATTERN_ERROR = re.compile(r"Expected `str` matching regex (?P<regex>.+?)(?: - at `(?P<path>[^`]*)`)?", re.DOTALL)


@dataclass(frozen=True, slots=True)
class _Described:
    pattern: str
    description: str | None
    example: str | None


def validation_message(error: msgspec.ValidationError, type_: Any) -> str:
    """What a client sent wrong, in words: `error` raised while decoding a `type_`."""
    message = str(error)
    failed = _PATTERN_ERROR.fullmatch(message)
    if failed is None:
        return message
    described = _patterns(type_).get(failed["regex"])
    if described is None:  # a pattern the type does not hold (not ours to describe)
        return message
    path = failed["path"] or "$"
    field = "the body" if path == "$" else path.removeprefix("$.")
    if described.description:
        expected = f"must be {described.description}"
    else:
        expected = f"must match the regular expression {described.pattern}"
    if described.example is not None:
        expected += f", like {described.example}"
    return f"{field}: {expected}"


@functools.cache
def _patterns(type_: Any) -> dict[str, _Described]:
    """Every pattern constraint within `type_`, keyed as msgspec's messages quote it."""
    found: dict[str, _Described] = {}
    _collect(mi.type_info(type_), {}, found, set())
    return found


def _collect(info: mi.Type, schema: dict[str, Any], found: dict[str, _Described], seen: set[int]) -> None:
    if id(info) in seen:  # a recursive struct refers to its own type info
        return
    seen.add(id(info))
    if isinstance(info, mi.Metadata):
        _collect(info.type, {**schema, **(info.extra_json_schema or {})}, found, seen)
        return
    if isinstance(info, mi.StrType) and info.pattern is not None:
        examples = schema.get("examples") or [None]
        found.setdefault(repr(info.pattern), _Described(info.pattern, schema.get("description"), examples[0]))
    # `Annotated[X | None, Meta(...)]` describes X; inside any other container, a part is described by its own Meta.
    inherited = schema if isinstance(info, mi.UnionType) else {}
    for name in info.__struct_fields__:
        value = getattr(info, name)
        for part in value if isinstance(value, tuple) else (value,):
            part_type = part.type if isinstance(part, mi.Field) else part
            if isinstance(part_type, mi.Type):
                _collect(part_type, inherited, found, seen)
