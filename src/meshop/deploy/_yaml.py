"""Kubernetes objects as YAML documents, with no YAML library at run time.

The objects are JSON-shaped (dicts, lists, strings, numbers, booleans); a string that YAML
could read as something else (`on`, `0.0.0.0/0`, `8080`, text with `: `) is written
double-quoted, anything but printable ASCII escaped. Block style, lists at their key's
indentation, as `kubectl get -o yaml` prints them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

_PLAIN = re.compile(r"[A-Za-z_/][A-Za-z0-9_./-]*")
#: Words YAML 1.1 (what many tools still read) takes for booleans or null.
_SPECIAL = {"y", "n", "yes", "no", "on", "off", "true", "false", "null"}


def dump_all(objects: Iterable[dict[str, Any]]) -> str:
    """`objects` as a stream of YAML documents, each starting with `---`."""
    return "".join("---\n" + "\n".join(_lines(obj, 0)) + "\n" for obj in objects)


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, int | float):
        return json.dumps(value)
    if isinstance(value, str):
        plain = _PLAIN.fullmatch(value) and value.lower() not in _SPECIAL  # `$` would admit a final newline
        return value if plain else _quoted(value)
    if value == {}:
        return "{}"
    if value == []:
        return "[]"
    raise TypeError(f"not JSON-shaped: {value!r}")


def _quoted(text: str) -> str:
    """A double-quoted YAML scalar: printable ASCII as is, everything else escaped (`\\uXXXX`, `\\UXXXXXXXX`)."""
    out = ['"']
    for char in text:
        code = ord(char)
        if char in '"\\':
            out.append("\\" + char)
        elif 0x20 <= code < 0x7F:
            out.append(char)
        else:
            out.append(f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


def _nested(value: Any) -> bool:
    return isinstance(value, dict | list) and bool(value)


def _lines(value: Any, indent: int) -> list[str]:
    pad = " " * indent
    out: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            name = _scalar(str(key))
            if not _nested(item):
                out.append(f"{pad}{name}: {_scalar(item)}")
            elif isinstance(item, dict):
                out += [f"{pad}{name}:", *_lines(item, indent + 2)]
            else:
                out += [f"{pad}{name}:", *_lines(item, indent)]
        return out
    if isinstance(value, list):
        for item in value:
            if not _nested(item):
                out.append(f"{pad}- {_scalar(item)}")
                continue
            inner = _lines(item, indent + 2)
            out += [f"{pad}- {inner[0].lstrip()}", *inner[1:]]
        return out
    return [pad + _scalar(value)]
