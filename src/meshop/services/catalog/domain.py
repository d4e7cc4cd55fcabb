"""Catalog rules: pagination cursors."""

from __future__ import annotations

import base64
import binascii

from meshop.mesh.errors import Unprocessable


def encode_cursor(last_id: str) -> str:
    return base64.urlsafe_b64encode(last_id.encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> str | None:
    if not cursor:
        return None
    try:
        value = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise Unprocessable("invalid cursor") from None
    if not value.isalnum() or len(value) > 32:
        raise Unprocessable("invalid cursor")
    return value
