"""Keyset pagination: opaque cursors over a unique, ordered column."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import Any, TypeVar

import sqlalchemy as sa

from meshop.mesh.api.routing import RequestContext
from meshop.mesh.data.store import Database
from meshop.mesh.errors import Unprocessable

T = TypeVar("T")

MAX_LIMIT = 1000


def encode_cursor(last_key: str) -> str:
    """The opaque cursor of the page after `last_key` (what `decode_cursor` reads back)."""
    return base64.urlsafe_b64encode(last_key.encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> str | None:
    """The key a cursor continues after; 422 for anything that is not one of ours."""
    if not cursor:
        return None
    try:
        value = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise Unprocessable("invalid cursor") from None
    if not value or len(value) > 200 or not value.isprintable():
        raise Unprocessable("invalid cursor")
    return value


def page_query(
    ctx: RequestContext, query: sa.Select[Any], key: sa.ColumnElement[Any], *, default: int = 100
) -> tuple[sa.Select[Any], int]:
    """`query` restricted to the page the request asks for (`?limit=&cursor=`), one row extra."""
    limit = ctx.query_int("limit", default=default, low=1, high=MAX_LIMIT)
    after = decode_cursor(ctx.query_str("cursor", max_length=300))
    if after is not None:
        query = query.where(key > after)
    return query.order_by(key).limit(limit + 1), limit


def next_cursor(rows: list[Any], limit: int, key: str) -> str | None:
    """The cursor of the next page, or None when `rows` (limit + 1 fetched) was the last."""
    return encode_cursor(str(getattr(rows[limit - 1], key))) if len(rows) > limit else None


async def read_page(
    ctx: RequestContext, db: Database, table: sa.Table, key: sa.Column[Any], item: Callable[[Any], T]
) -> tuple[list[T], str | None]:
    """One page of `table` in `key` order, as the request asks: its items and the next cursor."""
    query, limit = page_query(ctx, sa.select(table), key)
    async with db.read() as conn:
        rows = list(await conn.execute(query))
    return [item(r) for r in rows[:limit]], next_cursor(rows, limit, key.name)
