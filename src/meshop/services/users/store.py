"""The users database: accounts and signing keys."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from meshop.mesh.auth import SigningKey
from meshop.mesh.store import Conn

metadata = sa.MetaData()

users = sa.Table(
    "users",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("email", sa.String(254), nullable=False, unique=True),
    sa.Column("name", sa.String(100), nullable=False),
    sa.Column("password_hash", sa.String(200), nullable=False),
    sa.Column("roles", sa.String(200), nullable=False),
    sa.Column("created_at", sa.String(40), nullable=False),
)

signing_keys = sa.Table(
    "signing_keys",
    metadata,
    sa.Column("kid", sa.String(32), primary_key=True),
    sa.Column("private_pem", sa.Text, nullable=False),
    sa.Column("created_at", sa.String(40), nullable=False),
    #: When it starts signing (None: at once); published in the JWKS before that.
    sa.Column("activates_at", sa.Float),
)

refresh_tokens = sa.Table(
    "refresh_tokens",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),  # sha256 of the secret, never the secret
    sa.Column("family", sa.String(32), nullable=False),
    sa.Column("user_id", sa.String(32), nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
    sa.Column("used_at", sa.Float),
    sa.Column("revoked", sa.Boolean, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)


@dataclass(frozen=True, slots=True)
class StoredKey:
    key: SigningKey
    activates_at: float | None


async def find_by_email(conn: Conn, email: str) -> dict[str, Any] | None:
    row = (await conn.execute(sa.select(users).where(users.c.email == email))).mappings().first()
    return dict(row) if row else None


async def find_by_id(conn: Conn, user_id: str) -> dict[str, Any] | None:
    row = (await conn.execute(sa.select(users).where(users.c.id == user_id))).mappings().first()
    return dict(row) if row else None


async def insert_user(conn: Conn, **values: Any) -> None:
    await conn.execute(users.insert().values(**{**values, "roles": json.dumps(values["roles"])}))


async def signing_keys_newest_first(conn: Conn) -> list[StoredKey]:
    rows = await conn.execute(sa.select(signing_keys).order_by(signing_keys.c.created_at.desc()))
    return [StoredKey(SigningKey(kid=r.kid, private_pem=r.private_pem.encode()), r.activates_at) for r in rows]


async def insert_signing_key(
    conn: Conn, key: SigningKey, created_at: str, *, activates_at: float | None = None
) -> None:
    await conn.execute(
        signing_keys.insert().values(
            kid=key.kid, private_pem=key.private_pem.decode(), created_at=created_at, activates_at=activates_at
        )
    )


order_stats = sa.Table(
    "order_stats",
    metadata,
    sa.Column("user_id", sa.String(32), primary_key=True),
    sa.Column("placed", sa.Integer, nullable=False),
    sa.Column("confirmed", sa.Integer, nullable=False),
    sa.Column("cancelled", sa.Integer, nullable=False),
    sa.Column("spent_cents", sa.BigInteger, nullable=False),
)


async def add_order_stats(conn: Conn, user_id: str, **deltas: int) -> None:
    """Add `deltas` to a customer's counters (creating the row at zero first)."""
    changes = {name: getattr(order_stats.c, name) + delta for name, delta in deltas.items()}
    updated = await conn.execute(order_stats.update().where(order_stats.c.user_id == user_id).values(**changes))
    if updated.rowcount == 0:
        counters = {"placed": 0, "confirmed": 0, "cancelled": 0, "spent_cents": 0, **deltas}
        await conn.execute(order_stats.insert().values(user_id=user_id, **counters))


async def order_stats_of(conn: Conn, user_id: str) -> Any:
    return (await conn.execute(sa.select(order_stats).where(order_stats.c.user_id == user_id))).first()


async def clear_order_stats(conn: Conn) -> None:
    """Empty the read model (before a replay rebuilds it)."""
    await conn.execute(order_stats.delete())


async def refresh_token(conn: Conn, token_hash: str) -> Any:
    query = sa.select(refresh_tokens).where(refresh_tokens.c.id == token_hash).with_for_update()
    return (await conn.execute(query)).first()


async def insert_refresh_token(conn: Conn, **values: Any) -> None:
    await conn.execute(refresh_tokens.insert().values(used_at=None, revoked=False, **values))


async def use_refresh_token(conn: Conn, token_hash: str, now: float) -> bool:
    """Mark it used unless it already was (False: a second use)."""
    result = await conn.execute(
        refresh_tokens.update()
        .where(refresh_tokens.c.id == token_hash, refresh_tokens.c.used_at.is_(None))
        .values(used_at=now)
    )
    return bool(result.rowcount == 1)


async def revoke_family(conn: Conn, family: str) -> None:
    await conn.execute(refresh_tokens.update().where(refresh_tokens.c.family == family).values(revoked=True))
